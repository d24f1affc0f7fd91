"""FLOPs and bytes of one batch, per operator class, from the model's shapes.

Linear layers follow DuetServe's roofline terms (F = 2 n d_in d_out; B = activations in and
out plus the weights). Attention follows DuetServe's per-request terms with q new and c cached
tokens, with the causal mask counted: a prefill chunk attends to c + (q + 1) / 2 tokens on
average (flash attention skips the masked half), a decode token to c + 1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from policies.batch import BatchShape
from profiler.config import ModelConfig

OP_CLASSES = ("gemm", "attn_prefill", "attn_decode", "other")


@dataclass(frozen=True)
class OpCosts:
    """Per-iteration FLOPs and bytes for each operator class (all layers plus the lm_head)."""

    flops: dict[str, float]
    bytes: dict[str, float]

    @property
    def total_bytes(self) -> float:
        return sum(self.bytes.values())


class CostModel:
    """Counts work for a model config; precomputes everything that does not depend on a batch."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        b = cfg.dtype_bytes
        h, L = cfg.hidden_size, cfg.num_layers
        self.linears = [
            (h, cfg.q_size + 2 * cfg.kv_size),  # qkv
            (cfg.q_size, h),  # o
            (h, 2 * cfg.intermediate_size),  # gate_up
            (cfg.intermediate_size, h),  # down
        ]
        # Per token per layer: the sum of d_in + d_out over the linears (activation traffic),
        # and the weight bytes read once per layer whatever the token count.
        self.gemm_flops_per_token = 2.0 * L * sum(i * o for i, o in self.linears)
        self.gemm_act_bytes_per_token = L * b * sum(i + o for i, o in self.linears)
        self.gemm_weight_bytes = L * b * sum(i * o for i, o in self.linears)
        self.head_flops_per_row = 2.0 * h * cfg.vocab_size
        self.head_weight_bytes = b * h * cfg.vocab_size
        self.head_act_bytes_per_row = b * (h + cfg.vocab_size)
        # Elementwise ops per token per layer: two RMSNorms, RoPE on q and k, SiLU-and-mul,
        # two residual adds; each reads and writes its operands once.
        i = cfg.intermediate_size
        per_layer = (2 * 2 * h) + 2 * (cfg.q_size + cfg.kv_size) + 3 * i + 2 * 3 * h
        self.other_bytes_per_token = L * b * per_layer
        self.other_flops_per_token = L * (10.0 * h + 4.0 * i)
        hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        # Attention per attended (query, key) pair: QK^T and PV (4 hq d) plus softmax (2 hq).
        self.attn_flops_per_pair = L * (4.0 * hq * d + 2.0 * hq)
        # Bytes: read q and write o per query token (2 hq d), write the new K/V (2 hkv d),
        # and read K/V of every attended token (2 hkv d).
        self.attn_q_bytes = L * b * (2 * hq * d + 2 * hkv * d)
        self.attn_kv_bytes_per_ctx = L * b * 2 * hkv * d
        # Policies that predict before deciding ask about the same shapes many times over.
        self.costs = functools.lru_cache(maxsize=1024)(self._costs)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["costs"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.costs = functools.lru_cache(maxsize=1024)(self._costs)

    def gemm(self, tokens, rows):
        flops = self.gemm_flops_per_token * tokens + self.head_flops_per_row * rows
        if isinstance(rows, int | float):
            # One batch: plain floats, the same sums in the same order as the array form.
            head = float(self.head_weight_bytes) if rows > 0 else 0.0
        else:
            head = np.where(np.asarray(rows) > 0, self.head_weight_bytes, 0.0)
        nbytes = (
            self.gemm_weight_bytes
            + self.gemm_act_bytes_per_token * tokens
            + head
            + self.head_act_bytes_per_row * rows
        )
        return flops, nbytes

    def attn_prefill(self, shape: BatchShape) -> tuple[float, float]:
        pairs = 0.0
        ctx = 0
        for q, c in zip(shape.prefill_q, shape.prefill_ctx, strict=True):
            pairs += q * (c + (q + 1) / 2.0)
            ctx += c + q
        flops = self.attn_flops_per_pair * pairs
        nbytes = self.attn_q_bytes * shape.prefill_tokens + self.attn_kv_bytes_per_ctx * ctx
        return flops, nbytes

    def attn_decode(self, n_decode, ctx_sum):
        flops = self.attn_flops_per_pair * ctx_sum
        nbytes = self.attn_q_bytes * n_decode + self.attn_kv_bytes_per_ctx * ctx_sum
        return flops, nbytes

    def other(self, tokens):
        return self.other_flops_per_token * tokens, self.other_bytes_per_token * tokens

    def _costs(self, shape: BatchShape) -> OpCosts:
        tokens = shape.tokens
        gf, gb = self.gemm(tokens, shape.sampled) if tokens else (0.0, 0.0)
        pf, pb = self.attn_prefill(shape)
        df, db = self.attn_decode(shape.n_decode, shape.decode_ctx_sum)
        of, ob = self.other(tokens)
        return OpCosts(
            flops={"gemm": float(gf), "attn_prefill": pf, "attn_decode": df, "other": of},
            bytes={"gemm": float(gb), "attn_prefill": pb, "attn_decode": db, "other": ob},
        )
