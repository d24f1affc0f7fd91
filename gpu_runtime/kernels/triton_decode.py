"""Paged decode attention in Triton (flash-decoding with GQA grouping).

Stage 1 gives each (request, KV head, split of the context) one program: it loads the query
heads that share the KV head, walks its share of the context ``BLOCK_N`` tokens at a time
through the block table, and keeps an online softmax. Stage 2 merges the splits. Splitting the
context keeps the GPU busy when few requests have long contexts; the split count is derived
from the lane's SM count, not the device's, because a green-context lane only has its own.

Imported only where Triton is installed; ``gpu_runtime.kernels.reference`` is the torch path.
With ``TRITON_INTERPRET=1`` set before Triton is first imported, the kernel runs on CPU
tensors through Triton's interpreter (how the tests check it without a GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 64
MAX_SPLITS = 64


def _stage1(
    Q,
    K,
    V,
    Tables,
    Lens,
    MidO,
    MidM,
    MidL,
    scale,
    tokens_per_split,
    s_qn,
    s_qh,
    s_kb,
    s_kt,
    s_kh,
    s_vb,
    s_vt,
    s_vh,
    s_tn,
    s_on,
    s_oh,
    s_os,
    s_mn,
    s_mh,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(Lens + seq)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, ctx)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM_PAD)
    heads = kvh * GROUP + g
    gmask = g < GROUP
    dmask = d < HEAD_DIM
    q = tl.load(
        Q + seq * s_qn + heads[:, None] * s_qh + d[None, :],
        mask=gmask[:, None] & dmask[None, :],
        other=0.0,
    )
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    offs = tl.arange(0, BLOCK)
    for t0 in range(start, end, BLOCK):
        pos = t0 + offs
        pmask = pos < end
        blk = tl.load(Tables + seq * s_tn + pos // BLOCK_SIZE, mask=pmask, other=0).to(tl.int64)
        tok = pos % BLOCK_SIZE
        kv_mask = pmask[:, None] & dmask[None, :]
        k = tl.load(
            K + blk[:, None] * s_kb + tok[:, None] * s_kt + kvh * s_kh + d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where(pmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, 1)
        v = tl.load(
            V + blk[:, None] * s_vb + tok[:, None] * s_vt + kvh * s_vh + d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    out_mask = gmask[:, None] & dmask[None, :]
    tl.store(
        MidO + seq * s_on + heads[:, None] * s_oh + split * s_os + d[None, :], acc, mask=out_mask
    )
    tl.store(MidM + seq * s_mn + heads * s_mh + split, m, mask=gmask)
    tl.store(MidL + seq * s_mn + heads * s_mh + split, l_sum, mask=gmask)


def _stage2(
    MidO,
    MidM,
    MidL,
    Out,
    Lens,
    num_splits,
    tokens_per_split,
    s_on,
    s_oh,
    s_os,
    s_mn,
    s_mh,
    s_xn,
    s_xh,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    SPLIT_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    ctx = tl.load(Lens + seq)
    s = tl.arange(0, SPLIT_PAD)
    d = tl.arange(0, DIM_PAD)
    dmask = d < HEAD_DIM
    valid = (s < num_splits) & (s * tokens_per_split < ctx)
    m = tl.load(MidM + seq * s_mn + head * s_mh + s, mask=valid, other=float("-inf"))
    l_sum = tl.load(MidL + seq * s_mn + head * s_mh + s, mask=valid, other=0.0)
    top = tl.max(m, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    w = tl.where(valid, tl.exp(m - top), 0.0)
    total = tl.sum(l_sum * w, 0)
    o = tl.load(
        MidO + seq * s_on + head * s_oh + s[:, None] * s_os + d[None, :],
        mask=valid[:, None] & dmask[None, :],
        other=0.0,
    )
    out = tl.sum(o * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(Out + seq * s_xn + head * s_xh + d, out.to(Out.dtype.element_ty), mask=dmask)


_stage1_jit = triton.jit(_stage1)
_stage2_jit = triton.jit(_stage2)


def choose_splits(programs: int, max_len: int, sms: int) -> int:
    """Enough context splits for about two waves of programs on ``sms`` SMs."""
    by_occupancy = -(-2 * max(sms, 1) // max(programs, 1))
    by_length = max(1, -(-max_len // (4 * BLOCK_N)))
    return int(max(1, min(by_occupancy, by_length, MAX_SPLITS)))


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_len: int,
    sms: int,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Attention of ``q`` ``[n, heads, head_dim]`` over each request's paged context.

    ``max_len`` bounds ``context_lens`` from the host, so no device value is read back (the
    call can be captured in a CUDA graph).
    """
    n, heads, dim = q.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = heads // kv_heads
    out = torch.empty_like(q)
    if n == 0:
        return out
    splits = num_splits or choose_splits(n * kv_heads, max_len, sms)
    per_split = -(-max(max_len, 1) // splits)
    per_split = -(-per_split // BLOCK_N) * BLOCK_N
    mid_o = torch.empty((n, heads, splits, dim), dtype=torch.float32, device=q.device)
    mid_m = torch.empty((n, heads, splits), dtype=torch.float32, device=q.device)
    mid_l = torch.empty_like(mid_m)
    dim_pad = max(16, triton.next_power_of_2(dim))
    _stage1_jit[(n, kv_heads, splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        mid_o,
        mid_m,
        mid_l,
        scale,
        per_split,
        q.stride(0),
        q.stride(1),
        *k_cache.stride()[:3],
        *v_cache.stride()[:3],
        block_tables.stride(0),
        *mid_o.stride()[:3],
        *mid_m.stride()[:2],
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=dim,
        DIM_PAD=dim_pad,
        BLOCK_SIZE=block_size,
        BLOCK=BLOCK_N,
    )
    _stage2_jit[(n, heads)](
        mid_o,
        mid_m,
        mid_l,
        out,
        context_lens,
        splits,
        per_split,
        *mid_o.stride()[:3],
        *mid_m.stride()[:2],
        out.stride(0),
        out.stride(1),
        HEAD_DIM=dim,
        DIM_PAD=dim_pad,
        SPLIT_PAD=max(2, triton.next_power_of_2(splits)),
    )
    return out
