"""The torch operations a sweep times, built for one model config on one CUDA device.

Each builder allocates its inputs and returns a closure that launches the operation on the
current stream, so the sweep can run it on any partition's stream. The operations are the
ones the runtime runs (``gpu_runtime``): bf16 GEMMs through cuBLAS, flash-attn when it is
installed (else torch SDPA with the KV heads expanded), and RMSNorm / RoPE / SiLU-and-mul /
residual written in plain torch. Decode attention reads a dense per-request KV tensor, the
same bytes a paged kernel reads.

torch is imported inside functions so the module imports on any machine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from profiler.config import ModelConfig

Launch = Callable[[], Any]


def flash_attn() -> Any | None:
    try:
        return importlib.import_module("flash_attn")
    except ImportError:
        return None


class Kernels:
    """Weights for ``layers`` decoder layers plus the lm_head, and closures over them."""

    def __init__(self, cfg: ModelConfig, device: Any, layers: int = 2) -> None:
        import torch

        self.torch = torch
        self.cfg = cfg
        self.device = device
        self.dtype = torch.bfloat16
        self.layers = layers
        self.flash = flash_attn()
        h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
        q, kv = cfg.q_size, cfg.kv_size
        shapes = {"qkv": (h, q + 2 * kv), "o": (q, h), "gate_up": (h, 2 * i), "down": (i, h)}
        # Stored as (d_in, d_out) so a GEMM is one ``mm`` into a preallocated output.
        self.weights = [
            {
                name: self._rand(d_in, d_out, scale=d_in**-0.5)
                for name, (d_in, d_out) in shapes.items()
            }
            for _ in range(layers)
        ]
        self.norms = [self._ones(h) for _ in range(2 * layers + 1)]
        self.lm_head = self._rand(h, v, scale=h**-0.5)
        self.shapes = {**shapes, "lm_head": (h, v)}
        half = cfg.head_dim // 2
        self._inv_freq = 1.0 / (
            cfg.rope_theta ** (torch.arange(0, half, device=device, dtype=torch.float32) / half)
        )

    @property
    def attention_backend(self) -> str:
        return "flash-attn" if self.flash is not None else "torch-sdpa"

    # -- tensors --------------------------------------------------------------------------

    def _rand(self, *shape: int, scale: float = 1.0) -> Any:
        return self.torch.randn(*shape, device=self.device, dtype=self.dtype) * scale

    def _ones(self, n: int) -> Any:
        return self.torch.ones(n, device=self.device, dtype=self.dtype)

    def _rope_tables(self, positions: Any) -> tuple[Any, Any]:
        freqs = self.torch.outer(positions.float(), self._inv_freq)
        emb = self.torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype)[:, None, :], emb.sin().to(self.dtype)[:, None, :]

    # -- single operators -----------------------------------------------------------------

    def gemm(self, name: str, tokens: int, layer: int = 0) -> Launch:
        d_in, d_out = self.shapes[name]
        w = self.lm_head if name == "lm_head" else self.weights[layer][name]
        x = self._rand(tokens, d_in)
        out = self.torch.empty(tokens, d_out, device=self.device, dtype=self.dtype)
        return lambda: self.torch.mm(x, w, out=out)

    def rmsnorm(self, x: Any, w: Any) -> Any:
        # fp32 statistics cast back before the weight: the runtime's RMSNorm.
        xf = x.float()
        xf = xf * self.torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)
        return w * xf.to(x.dtype)

    def rope(self, q: Any, k: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
        def rotate(x: Any) -> Any:
            half = x.shape[-1] // 2
            return self.torch.cat((-x[..., half:], x[..., :half]), dim=-1)

        return q * cos + rotate(q) * sin, k * cos + rotate(k) * sin

    def silu_mul(self, gate_up: Any) -> Any:
        i = self.cfg.intermediate_size
        return self.torch.nn.functional.silu(gate_up[:, :i]) * gate_up[:, i:]

    def other(self, name: str, tokens: int) -> Launch:
        cfg, torch = self.cfg, self.torch
        h = cfg.hidden_size
        if name == "rmsnorm":
            x, w = self._rand(tokens, h), self.norms[0]
            return lambda: self.rmsnorm(x, w)
        if name == "rope":
            q = self._rand(tokens, cfg.num_heads, cfg.head_dim)
            k = self._rand(tokens, cfg.num_kv_heads, cfg.head_dim)
            cos, sin = self._rope_tables(torch.arange(tokens, device=self.device))
            return lambda: self.rope(q, k, cos, sin)
        if name == "silu_mul":
            gu = self._rand(tokens, 2 * cfg.intermediate_size)
            return lambda: self.silu_mul(gu)
        if name == "residual":
            a, b = self._rand(tokens, h), self._rand(tokens, h)
            out = torch.empty_like(a)
            return lambda: torch.add(a, b, out=out)
        raise ValueError(f"unknown elementwise op {name!r}")

    def attention_prefill(self, chunk: int, prefix: int) -> Launch:
        q, k, v = self._prefill_qkv(chunk, prefix)
        return lambda: self._prefill_attention(q, k, v, prefix)

    def _prefill_qkv(self, chunk: int, prefix: int) -> tuple[Any, Any, Any]:
        cfg = self.cfg
        q = self._rand(chunk, cfg.num_heads, cfg.head_dim)
        k = self._rand(prefix + chunk, cfg.num_kv_heads, cfg.head_dim)
        v = self._rand(prefix + chunk, cfg.num_kv_heads, cfg.head_dim)
        return q, k, v

    def _prefill_attention(self, q: Any, k: Any, v: Any, prefix: int) -> Any:
        """Causal attention of ``q`` (rows at positions prefix..) over ``k``/``v`` [T, H, D]."""
        scale = self.cfg.head_dim**-0.5
        if self.flash is not None:
            # flash-attn aligns the causal mask bottom-right, i.e. at the chunk's offset.
            out = self.flash.flash_attn_func(
                q[None], k[None], v[None], softmax_scale=scale, causal=True
            )
            return out[0]
        torch = self.torch
        group = q.shape[1] // k.shape[1]
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        qt, kt, vt = (x.transpose(0, 1)[None] for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        if prefix == 0:
            out = sdpa(qt, kt, vt, is_causal=True, scale=scale)
        else:
            from torch.nn.attention.bias import causal_lower_right

            out = sdpa(
                qt, kt, vt, attn_mask=causal_lower_right(q.shape[0], k.shape[0]), scale=scale
            )
        return out[0].transpose(0, 1)

    def attention_decode(self, batch: int, context: int) -> Launch:
        q, k, v = self._decode_qkv(batch, context)
        return lambda: self._decode_attention(q, k, v)

    def _decode_qkv(self, batch: int, context: int) -> tuple[Any, Any, Any]:
        cfg = self.cfg
        q = self._rand(batch, cfg.num_heads, cfg.head_dim)
        return (q, self._decode_cache(batch, context), self._decode_cache(batch, context))

    def _decode_cache(self, batch: int, context: int) -> Any:
        # Each backend's native layout, so neither copies the cache to make it contiguous:
        # flash-attn reads [B, T, Hkv, D], SDPA [B, Hkv, T, D].
        cfg = self.cfg
        if self.flash is not None:
            return self._rand(batch, context, cfg.num_kv_heads, cfg.head_dim)
        return self._rand(batch, cfg.num_kv_heads, context, cfg.head_dim)

    def _last_slot(self, cache: Any) -> Any:
        return cache[:, -1] if self.flash is not None else cache[:, :, -1]

    def _decode_attention(self, q: Any, k: Any, v: Any) -> Any:
        """One new token per request, ``q`` [B, H, D], over the cached K/V of each request."""
        scale = self.cfg.head_dim**-0.5
        if self.flash is not None:
            return self.flash.flash_attn_func(q[:, None], k, v, softmax_scale=scale)[:, 0]
        b, hq, d = q.shape
        hkv = k.shape[1]
        # A query head group shares its KV head: attend as ``group`` query rows per KV head,
        # which keeps SDPA on its fused kernels without expanding K/V.
        qg = q.reshape(b, hkv, hq // hkv, d)
        out = self.torch.nn.functional.scaled_dot_product_attention(qg, k, v, scale=scale)
        return out.reshape(b, hq, d)

    def peak(self, n: int) -> Launch:
        a, b = self._rand(n, n), self._rand(n, n)
        out = self.torch.empty(n, n, device=self.device, dtype=self.dtype)
        return lambda: self.torch.mm(a, b, out=out)

    def copy(self, nbytes: int) -> Launch:
        src = self.torch.empty(nbytes, device=self.device, dtype=self.torch.uint8)
        dst = self.torch.empty_like(src)
        return lambda: dst.copy_(src)

    # -- whole iterations -----------------------------------------------------------------

    def _layer(self, i: int, x: Any, cos: Any, sin: Any, attend: Callable) -> Any:
        cfg, torch, w = self.cfg, self.torch, self.weights[i]
        q_size, kv_size = cfg.q_size, cfg.kv_size
        hn = self.rmsnorm(x, self.norms[2 * i])
        qkv = torch.mm(hn, w["qkv"])
        q = qkv[:, :q_size].view(-1, cfg.num_heads, cfg.head_dim)
        k = qkv[:, q_size : q_size + kv_size].view(-1, cfg.num_kv_heads, cfg.head_dim)
        v = qkv[:, q_size + kv_size :].view(-1, cfg.num_kv_heads, cfg.head_dim)
        q, k = self.rope(q, k, cos, sin)
        attn = attend(i, q, k, v).reshape(-1, q_size)
        x = x + torch.mm(attn, w["o"])
        hn = self.rmsnorm(x, self.norms[2 * i + 1])
        return x + torch.mm(self.silu_mul(torch.mm(hn, w["gate_up"])), w["down"])

    def _head(self, x: Any) -> Any:
        return self.torch.mm(self.rmsnorm(x, self.norms[-1]), self.lm_head)

    def prefill_iteration(self, chunk: int, prefix: int) -> tuple[Launch, Launch]:
        """(all layers, final norm + lm_head on the last row) of one prefill chunk."""
        torch, cfg = self.torch, self.cfg
        x = self._rand(chunk, cfg.hidden_size)
        cos, sin = self._rope_tables(torch.arange(prefix, prefix + chunk, device=self.device))
        cache = [
            (
                self._rand(prefix, cfg.num_kv_heads, cfg.head_dim),
                self._rand(prefix, cfg.num_kv_heads, cfg.head_dim),
            )
            for _ in range(self.layers)
        ]
        state: dict[str, Any] = {}

        def attend(i: int, q: Any, k: Any, v: Any) -> Any:
            if prefix:
                # The runtime gathers the cached prefix beside the chunk's own K/V.
                k = torch.cat((cache[i][0], k))
                v = torch.cat((cache[i][1], v))
            return self._prefill_attention(q, k, v, prefix)

        def layers() -> None:
            h = x
            for i in range(self.layers):
                h = self._layer(i, h, cos, sin, attend)
            state["last"] = h[-1:]

        def head() -> Any:
            return self._head(state.get("last", x[-1:]))

        return layers, head

    def decode_iteration(self, batch: int, context: int) -> tuple[Launch, Launch]:
        """(all layers, final norm + lm_head on every row) of one decode step."""
        torch, cfg = self.torch, self.cfg
        x = self._rand(batch, cfg.hidden_size)
        cos, sin = self._rope_tables(torch.full((batch,), context - 1, device=self.device))
        cache = [
            (self._decode_cache(batch, context), self._decode_cache(batch, context))
            for _ in range(self.layers)
        ]
        out = torch.empty_like(x)

        def attend(i: int, q: Any, k: Any, v: Any) -> Any:
            kc, vc = cache[i]
            self._last_slot(kc).copy_(k)  # the new token's K/V lands in the cache first
            self._last_slot(vc).copy_(v)
            return self._decode_attention(q, kc, vc)

        def layers() -> None:
            h = x
            for i in range(self.layers):
                h = self._layer(i, h, cos, sin, attend)
            out.copy_(h)

        return layers, lambda: self._head(out)

    def mixed_iteration(
        self, chunk: int, prefix: int, n_decode: int, context: int
    ) -> tuple[Launch, Launch]:
        """(all layers, final norm + lm_head) of one chunked-prefill batch: a prefill chunk
        and ``n_decode`` decode requests in one forward pass, as aggregated serving runs them.

        The GEMMs and elementwise operators run once over all ``chunk + n_decode`` rows; the
        attention runs the prefill kernel on the chunk's rows and the decode kernel on the
        rest (a fused varlen kernel would read the same bytes in one launch). The lm_head
        samples the chunk's last row and every decode row.
        """
        torch, cfg = self.torch, self.cfg
        x = self._rand(chunk + n_decode, cfg.hidden_size)
        positions = torch.cat(
            (
                torch.arange(prefix, prefix + chunk, device=self.device),
                torch.full((n_decode,), context - 1, device=self.device),
            )
        )
        cos, sin = self._rope_tables(positions)
        kv = cfg.num_kv_heads, cfg.head_dim
        prefix_cache = [
            (self._rand(prefix, *kv), self._rand(prefix, *kv)) for _ in range(self.layers)
        ]
        decode_cache = [
            (self._decode_cache(n_decode, context), self._decode_cache(n_decode, context))
            for _ in range(self.layers)
        ]
        sampled = torch.empty(n_decode + 1, cfg.hidden_size, device=self.device, dtype=self.dtype)

        def attend(i: int, q: Any, k: Any, v: Any) -> Any:
            pk, pv = k[:chunk], v[:chunk]
            if prefix:
                pk, pv = torch.cat((prefix_cache[i][0], pk)), torch.cat((prefix_cache[i][1], pv))
            out = [self._prefill_attention(q[:chunk], pk, pv, prefix)]
            if n_decode:
                kc, vc = decode_cache[i]
                self._last_slot(kc).copy_(k[chunk:])
                self._last_slot(vc).copy_(v[chunk:])
                out.append(self._decode_attention(q[chunk:], kc, vc))
            return torch.cat(out)

        def layers() -> None:
            h = x
            for i in range(self.layers):
                h = self._layer(i, h, cos, sin, attend)
            sampled.copy_(h[chunk - 1 :])

        return layers, lambda: self._head(sampled)
