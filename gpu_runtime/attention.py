"""Attention over the paged KV cache: write the new K/V, then prefill and decode attention.

Backends, picked once per engine: ``flash`` (flash-attn's varlen kernel for prefill and its
paged kernel for decode, which needs blocks of 256 tokens), ``triton`` (torch SDPA for prefill,
the Triton paged kernel for decode) and ``torch`` (SDPA and the pure-torch paged reference; the
CPU path and the one tests compare against).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from gpu_runtime.inputs import AttentionMeta, PrefillSeq, to_device
from gpu_runtime.kernels.reference import gather_kv, paged_decode_reference
from twin.errors import TwinError


def pick_backend(requested: str, device: torch.device, block_size: int) -> str:
    has_flash = importlib.util.find_spec("flash_attn") is not None
    has_triton = importlib.util.find_spec("triton") is not None
    if device.type != "cuda":
        if requested in ("triton", "flash"):
            raise TwinError(f"--attention {requested} needs a CUDA device; use torch on a CPU")
        return "torch"
    if requested == "flash" and not has_flash:
        raise TwinError("--attention flash: flash-attn is not installed (pip install flash-attn)")
    if requested == "triton" and not has_triton:
        raise TwinError("--attention triton: triton is not installed (pip install triton)")
    if requested != "auto":
        return requested
    if has_flash and block_size % 256 == 0:
        return "flash"
    return "triton" if has_triton else "torch"


class PagedAttention:
    """Runs one layer's attention for a flat batch of prefill rows followed by decode rows."""

    def __init__(self, backend: str, scale: float, sms: int = 0) -> None:
        self.backend = backend
        self.scale = scale
        self.sms = sms  # the lane's SM count, for sizing decode kernel grids

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        meta: AttentionMeta,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
        p = meta.num_prefill_tokens
        if meta.num_decode == 0:
            return self.prefill(q, k, v, meta, k_cache, v_cache)
        decode = self.decode(q[p:], k_cache, v_cache, meta)
        if p == 0:
            return decode
        return torch.cat((self.prefill(q[:p], k[:p], v[:p], meta, k_cache, v_cache), decode))

    def prefill(self, q, k, v, meta: AttentionMeta, k_cache, v_cache) -> torch.Tensor:
        if self.backend == "flash":
            return _flash_prefill(q, k, v, meta.prefill, k_cache, v_cache, self.scale)
        out = torch.empty_like(q)
        for seq in meta.prefill:
            rows = slice(seq.q_start, seq.q_start + seq.q_len)
            if seq.ctx_len == 0:
                keys, values = k[rows], v[rows]
            else:
                total = seq.ctx_len + seq.q_len
                keys = gather_kv(k_cache, seq.block_table, total)
                values = gather_kv(v_cache, seq.block_table, total)
            out[rows] = sdpa_chunk(q[rows], keys, values, seq.ctx_len, self.scale)
        return out

    def decode(self, q, k_cache, v_cache, meta: AttentionMeta) -> torch.Tensor:
        tables, lens = meta.decode_tables, meta.decode_lens
        if self.backend == "flash":
            from flash_attn import flash_attn_with_kvcache

            out = flash_attn_with_kvcache(
                q.unsqueeze(1),
                k_cache,
                v_cache,
                cache_seqlens=lens,
                block_table=tables,
                softmax_scale=self.scale,
                causal=True,
            )
            return out.squeeze(1)
        if self.backend == "triton":
            from gpu_runtime.kernels.triton_decode import paged_decode

            return paged_decode(
                q, k_cache, v_cache, tables, lens, self.scale, meta.decode_max_len, self.sms
            )
        return paged_decode_reference(
            q, k_cache, v_cache, tables, lens, self.scale, meta.decode_max_len
        )


def write_kv(k_cache, v_cache, k, v, slots: torch.Tensor) -> None:
    """Store each row's K/V at its slot (block * block_size + offset)."""
    kv_heads, dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, kv_heads, dim).index_copy_(0, slots, k.to(k_cache.dtype))
    v_cache.view(-1, kv_heads, dim).index_copy_(0, slots, v.to(v_cache.dtype))


def sdpa_chunk(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, ctx_len: int, scale: float
) -> torch.Tensor:
    """Causal attention of a chunk whose first row sits at position ``ctx_len``.

    ``q`` is ``[q_len, heads, dim]``; ``keys``/``values`` hold positions ``0 .. ctx_len+q_len``.
    KV heads are expanded to the query heads and the causal mask is aligned to the bottom
    right (``causal_lower_right``), so SDPA can pick its fused kernels on a GPU instead of
    materialising a ``[heads, q, k]`` score tensor.
    """
    group = q.shape[1] // keys.shape[1]
    if group > 1:
        keys = keys.repeat_interleave(group, dim=1)
        values = values.repeat_interleave(group, dim=1)
    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, keys, values))
    if ctx_len == 0:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)
    else:
        mask = causal_lower_right(q.shape[0], keys.shape[0])
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    return out.squeeze(0).transpose(0, 1)


def _flash_prefill(q, k, v, seqs: list[PrefillSeq], k_cache, v_cache, scale) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    keys, values, cu_k, cu_q = [], [], [0], [0]
    for seq in seqs:
        rows = slice(seq.q_start, seq.q_start + seq.q_len)
        if seq.ctx_len == 0:
            keys.append(k[rows])
            values.append(v[rows])
        else:
            total = seq.ctx_len + seq.q_len
            keys.append(gather_kv(k_cache, seq.block_table, total))
            values.append(gather_kv(v_cache, seq.block_table, total))
        cu_q.append(cu_q[-1] + seq.q_len)
        cu_k.append(cu_k[-1] + keys[-1].shape[0])
    device = q.device
    # flash-attn aligns the causal mask to the bottom right, which is the chunk's offset.
    return flash_attn_varlen_func(
        q,
        torch.cat(keys),
        torch.cat(values),
        to_device(torch.tensor(cu_q, dtype=torch.int32), device),
        to_device(torch.tensor(cu_k, dtype=torch.int32), device),
        max(s.q_len for s in seqs),
        max(cu_k[i + 1] - cu_k[i] for i in range(len(seqs))),
        softmax_scale=scale,
        causal=True,
    )
