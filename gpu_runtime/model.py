"""A Llama-family decoder (Llama 3.x, Qwen3) over the paged KV cache.

Attention is grouped-query with RoPE (llama3 scaling where configured); Qwen3 adds a per-head
RMSNorm on queries and keys before RoPE. The QKV and gate/up projections are fused into one
GEMM each; ``gpu_runtime.weights`` maps Hugging Face tensor names onto them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpu_runtime.attention import PagedAttention
from gpu_runtime.inputs import AttentionMeta
from gpu_runtime.kv import PagedKV
from gpu_runtime.layers import RMSNorm, Rotary
from profiler.config import ModelConfig


def _linear(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=False, dtype=dtype, device=device).requires_grad_(False)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.cfg = cfg
        self.input_layernorm = RMSNorm(h, eps, dtype, device)
        self.qkv_proj = _linear(h, cfg.q_size + 2 * cfg.kv_size, dtype, device)
        self.o_proj = _linear(cfg.q_size, h, dtype, device)
        self.q_norm = RMSNorm(cfg.head_dim, eps, dtype, device) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, eps, dtype, device) if cfg.qk_norm else None
        self.post_attention_layernorm = RMSNorm(h, eps, dtype, device)
        self.gate_up_proj = _linear(h, 2 * cfg.intermediate_size, dtype, device)
        self.down_proj = _linear(cfg.intermediate_size, h, dtype, device)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMeta,
        rotary: Rotary,
        attention: PagedAttention,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        cfg = self.cfg
        t = x.shape[0]
        qkv = self.qkv_proj(self.input_layernorm(x))
        q, k, v = qkv.split((cfg.q_size, cfg.kv_size, cfg.kv_size), dim=-1)
        q = q.reshape(t, cfg.num_heads, cfg.head_dim)
        k = k.reshape(t, cfg.num_kv_heads, cfg.head_dim)
        v = v.reshape(t, cfg.num_kv_heads, cfg.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotary(q, k, positions)
        attn = attention(q, k, v, meta, k_cache, v_cache)
        x = x + self.o_proj(attn.reshape(t, cfg.q_size))
        gate, up = self.gate_up_proj(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up)


class LlamaModel(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        device = torch.device(device)
        self.cfg = cfg
        self.dtype = dtype
        self.device = device
        self.max_len = max_len
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, device=device
        ).requires_grad_(False)
        self.layers = nn.ModuleList(DecoderLayer(cfg, dtype, device) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else _linear(cfg.hidden_size, cfg.vocab_size, dtype, device)
        )
        self.rotary = Rotary(cfg, max_len, device)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMeta,
        kv: PagedKV,
        attention: PagedAttention,
    ) -> torch.Tensor:
        """Final hidden states (after the last norm) of every row, ``[T, hidden]``."""
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, meta, self.rotary, attention, kv.k[i], kv.v[i])
        return self.norm(x)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()
