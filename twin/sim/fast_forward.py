"""Steady decode runs: how many identical decode iterations one simulator event may cover.

A decode-only batch the policy marks steady (``Batch.steady_steps``) would be asked for again,
unchanged, until something outside it changes: an arrival, the other lane's batch ending, a
request finishing or the KV cache filling. The simulator advances it up to that moment in one
event, so the result equals stepping one iteration at a time.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from policies import Batch, KVCache, Lane, Request
from twin.core import Run

if TYPE_CHECKING:
    from twin.sim.simulator import Simulator


def steady_steps(
    sim: Simulator, batch: Batch, lane: Lane, sms: int, co: Run | None
) -> tuple[int, np.ndarray | None]:
    """How many identical decode iterations can pass before anything could change.

    Also returns the predicted durations when it had to compute them (at least ``steps``).
    """
    if not sim.config.fast_forward or batch.prefill or not batch.decode:
        return 1, None
    reqs = batch.decode
    limit = min(
        batch.steady_steps,
        sim.config.max_steps_per_event,
        min(r.output_tokens - r.generated for r in reqs),
    )
    if limit <= 1:
        return 1, None
    limit = kv_steps(sim.kv, reqs, limit)
    if limit <= 1:
        return 1, None
    horizon = sim._horizon(lane, co, batch)
    if math.isinf(horizon):
        return limit, None
    shape = batch.shape()
    co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
    durations = sim.model.predict_decode_run(
        shape.n_decode, shape.decode_ctx_sum, limit, sms, co_shape, co_sms
    )
    # The iteration running when the horizon arrives still completes; the next one is
    # decided with the new state.
    ends = np.cumsum(durations)
    steps = max(1, min(limit, int(np.searchsorted(ends, horizon - sim.env.now)) + 1))
    return steps, durations


def kv_steps(kv: KVCache, reqs: list[Request], limit: int) -> int:
    """The most steps (up to ``limit``) every request in ``reqs`` can grow by in ``kv``."""
    # Plain integers: a batch holds tens of requests, too few for numpy to pay for itself.
    bs = kv.block_size
    slack = [kv.held(r.id) * bs - r.kv_tokens for r in reqs]
    free = kv.free_blocks

    def blocks(m: int) -> int:
        return sum(-(-(m - s) // bs) for s in slack if m > s)

    if blocks(limit) <= free:
        return limit
    lo, hi = 0, limit  # blocks(lo) fits, blocks(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if blocks(mid) <= free:
            lo = mid
        else:
            hi = mid
    return lo
