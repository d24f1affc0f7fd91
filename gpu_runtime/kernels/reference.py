"""Pure-torch paged attention: the reference the Triton kernel is checked against, and the CPU path.

Caches are ``[num_blocks, block_size, kv_heads, head_dim]``; a request's tokens live in the
blocks its block table lists, in order.
"""

from __future__ import annotations

import torch


def gather_kv(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` tokens of one request as ``[length, kv_heads, head_dim]``."""
    bs = cache.shape[1]
    blocks = table[: -(-length // bs)].long()
    return cache[blocks].reshape(-1, cache.shape[2], cache.shape[3])[:length]


def paged_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_len: int | None = None,
) -> torch.Tensor:
    """One query token per request attending to its ``context_lens`` cached tokens.

    ``q`` is ``[n, heads, head_dim]``; query heads share KV heads in groups (GQA). A request with
    an empty context (a padding row) gets zeros.
    """
    n, heads, dim = q.shape
    bs, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = heads // kv_heads
    if max_len is None:
        max_len = int(context_lens.max()) if n else 0
    nb = max(1, -(-max_len // bs))
    tables = block_tables[:, :nb].long()
    k = k_cache[tables].reshape(n, nb * bs, kv_heads, dim).float()
    v = v_cache[tables].reshape(n, nb * bs, kv_heads, dim).float()
    qg = q.float().view(n, kv_heads, group, dim)
    scores = torch.einsum("nhgd,nshd->nhgs", qg, k) * scale
    valid = torch.arange(nb * bs, device=q.device)[None, :] < context_lens[:, None].long()
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with no context at all
    out = torch.einsum("nhgs,nshd->nhgd", probs, v)
    return out.reshape(n, heads, dim).to(q.dtype)
