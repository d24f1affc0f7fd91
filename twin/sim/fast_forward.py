"""Steady decode runs: how many identical decode iterations one simulator event may cover.

A decode-only batch the policy marks steady (``Batch.steady_steps``) would be asked for again,
unchanged, until something outside it changes: an arrival, the other lane's batch ending, a
request finishing or the KV cache filling. The simulator advances it up to that moment in one
event, so the result equals stepping one iteration at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from policies import Batch, BatchShape, KVCache, Lane, Request
from twin.core import Run

if TYPE_CHECKING:
    from twin.sim.simulator import Simulator


# A horizon cuts most runs within a few iterations, long before their limit: the first
# ``SCALAR_STEPS`` are predicted one by one in plain floats where the model can, the rest in
# numpy pieces, the first ``FIRST_PIECE`` long and each further one twice as long.
SCALAR_STEPS = 32
FIRST_PIECE = 16


def steady_steps(
    sim: Simulator, batch: Batch, lane: Lane, sms: int, co: Run | None, shape: BatchShape
) -> tuple[int, list[float] | np.ndarray | None]:
    """How many identical decode iterations can pass before anything could change.

    Also returns the predicted durations when it had to compute them (at least ``steps``):
    a list when they were predicted one by one, else an array.
    """
    if not sim.config.fast_forward or batch.prefill or not batch.decode:
        return 1, None
    reqs = batch.decode
    limit = min(
        batch.steady_steps,
        sim.config.max_steps_per_event,
        min([r.output_tokens - r.generated for r in reqs]),
    )
    if limit <= 1:
        return 1, None
    limit = kv_steps(sim.kv, reqs, limit)
    if limit <= 1:
        return 1, None
    horizon = sim._horizon(lane, co, batch)
    co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
    return run_length(
        sim, shape.n_decode, shape.decode_ctx_sum, limit, horizon - sim.env.now, sms, co_shape,
        co_sms,
    )  # fmt: skip


def run_length(
    sim: Simulator, n: int, ctx: int, limit: int, budget: float, sms: int, co_shape, co_sms: int
) -> tuple[int, list[float] | np.ndarray | None]:
    """How many of ``limit`` steady steps of ``n`` decodes over ``ctx`` context pass before
    ``budget`` seconds (the step under way then completes), with their predicted durations
    when computed (at least that many)."""
    if math.isinf(budget):
        return limit, None
    # The iteration running when the horizon arrives still completes; the next one is
    # decided with the new state. Predicted only up to that iteration, a step at a time in
    # plain floats where the model can, else in pieces; either way the ends accumulate in
    # the order one cumulative sum over the whole run would.
    pieces: list[np.ndarray] = []
    done, end = 0, 0.0
    step_s = sim.model.decode_step_s(n, ctx, sms, co_shape, co_sms)
    if step_s is not None:
        first: list[float] = []
        for j in range(min(limit, SCALAR_STEPS)):
            d = step_s(j)
            first.append(d)
            end += d
            if end >= budget:
                return len(first), first
        done = len(first)
        if done == limit:
            return limit, first
        pieces.append(np.array(first))
    predict = sim.model.predict_decode_run
    size = FIRST_PIECE
    while True:
        k = min(size, limit - done)
        durations = predict(n, ctx, k, sms, co_shape, co_sms, first=done)
        pieces.append(durations)
        if done:
            durations = durations.copy()
            durations[0] += end
        # The arrays' own methods: numpy's module functions wrap them in a Python call each.
        ends = durations.cumsum()
        i = int(ends.searchsorted(budget))
        if i < k or done + k == limit:
            steps = min(limit, done + i + 1)
            break
        done += k
        end = float(ends[-1])
        size *= 2
    return steps, pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def kv_steps(kv: KVCache, reqs: list[Request], limit: int) -> int:
    """The most steps (up to ``limit``) every request in ``reqs`` can grow by in ``kv``."""
    # Plain integers: a batch holds tens of requests, too few for numpy to pay for itself.
    bs = kv.block_size
    free = kv.free_blocks
    # Every running request already holds the blocks of its ``kv_tokens``, so none needs
    # more than ``ceil(limit / bs)`` new blocks: when all of those fit, nothing else counts.
    if len(reqs) * -(-limit // bs) <= free:
        return limit
    return kv_limit(free, bs, kv.room(reqs), limit)


def kv_blocks(bs: int, slack: list[int], caps: list[int] | None = None) -> Callable[[int], int]:
    """The blocks requests with ``slack`` tokens of room each (and ``caps``, see
    ``kv_limit``) take to grow by ``m`` steps, as a function of ``m``."""
    if caps is None:

        def blocks(m: int) -> int:
            return sum(-(-(m - s) // bs) for s in slack if m > s)

        return blocks
    # A request whose cap is within the room it holds never takes a block.
    pairs = [(s, c) for s, c in zip(slack, caps, strict=True) if c > s]

    def capped(m: int) -> int:
        return sum(-(-((m if m < c else c) - s) // bs) for s, c in pairs if m > s)

    return capped


def kv_limit(
    free: int, bs: int, slack: list[int], limit: int, caps: list[int] | None = None
) -> int:
    """The most steps (up to ``limit``) requests with ``slack`` tokens of room each in the
    blocks they hold can grow by with ``free`` blocks (a negative slack: blocks owed); a
    request with a cap stops growing after that many steps."""
    if len(slack) * -(-(limit + 1) // bs) <= free:
        return limit
    blocks = kv_blocks(bs, slack, caps)
    if blocks(limit) <= free:
        return limit
    return steps_that_fit(blocks, free, limit)


def steps_that_fit(blocks: Callable[[int], int], free: int, limit: int) -> int:
    """The most steps below ``limit`` whose ``blocks`` fit ``free``, given that the blocks of
    ``limit`` steps do not (``kv_limit``'s search, for a caller that has counted them)."""
    lo, hi = 0, limit  # blocks(lo) fits, blocks(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if blocks(mid) <= free:
            lo = mid
        else:
            hi = mid
    return lo
