"""Shapes of the work a lane would run next, for policies that predict before they decide.

These are estimates for a cost model, not batches: they skip the KV check, so they describe
the work queued, which is what a partitioning decision should weigh.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import attrgetter

from policies.batch import BatchShape
from policies.request import Request

_kv_tokens = attrgetter("kv_tokens")


def prefill_shape(queue: Iterable[Request], token_budget: int, max_chunks: int) -> BatchShape:
    """The chunks a prefill batch would take from ``queue`` (in order) under a token budget."""
    q: list[int] = []
    ctx: list[int] = []
    sampled = 0
    for req in queue:
        if token_budget <= 0 or len(q) >= max_chunks:
            break
        length = min(req.remaining_prefill, token_budget)
        if length <= 0:
            continue
        q.append(length)
        ctx.append(req.kv_tokens)
        sampled += int(req.kv_tokens + length >= req.prefill_target)
        token_budget -= length
    return BatchShape(prefill_q=tuple(q), prefill_ctx=tuple(ctx), sampled=sampled)


def decode_shape(requests: Sequence[Request]) -> BatchShape:
    """One decode step of every request given."""
    n = len(requests)
    return BatchShape.decode(n, sum(map(_kv_tokens, requests)) + n)


def merge(prefill: BatchShape, decode: BatchShape) -> BatchShape:
    """One mixed batch holding both."""
    return BatchShape(
        prefill_q=prefill.prefill_q,
        prefill_ctx=prefill.prefill_ctx,
        n_decode=decode.n_decode,
        decode_ctx_sum=decode.decode_ctx_sum,
        sampled=prefill.sampled + decode.sampled,
    )
