"""Decode phases: steady decode iterations a run goes on with, past its first step or finishes.

A policy may promise more than one steady batch. After a batch with prefill chunks it may
promise the decode batch of every request that follows (``Batch.then``); a steady decode
batch of every running request with nobody waiting may promise that, as its requests finish,
the rest go on alike (``Batch.past_finishes``). The simulator then runs these iterations in
the same event: a run is its first step (when it prefills) and a decode phase of segments,
each a steady decode batch of the requests still decoding, cut where one finishes. A phase
ends where the first of these comes: the promise's limit, the KV cache filling (counted as if
finished requests kept their blocks, so it never ends late), or the horizon.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from policies import BatchShape, Request
from twin.core import DecodePhase
from twin.sim.fast_forward import kv_blocks, run_length, steps_that_fit

if TYPE_CHECKING:
    from twin.sim.simulator import Simulator


def plan_phase(
    sim: Simulator,
    members: Callable[[], list[Request]],
    remaining: list[int],
    token_of: Callable[[int], int],
    ctx: int,
    promised: int,
    past_finishes: bool,
    budget: float,
    sms: int,
    slack: Callable[[], list[int]],
) -> tuple[int, list[float] | np.ndarray, DecodePhase | None]:
    """How many decode iterations the phase's members run within ``promised`` iterations and
    ``budget`` seconds, their predicted durations, and the phase.

    Member ``i`` has ``remaining[i]`` tokens to generate and holds ``token_of(i)`` tokens at
    the phase's start (``ctx`` in all); ``members()`` lists them (asked only for a phase) and
    ``slack()`` the room each has in the blocks it holds then (asked only when KV is tight).
    """
    limit = min(promised, sim.config.max_steps_per_event)
    low = min(remaining)
    limit = min(limit, max(remaining) if past_finishes else low)
    if limit < 1 or budget <= 0:
        return 0, [], None
    n = len(remaining)
    bs = sim.kv.block_size
    free = sim.kv.free_blocks
    # Each member owes at most the block of its next token: when the blocks of ``limit``
    # more tokens each fit, nothing else counts.
    if n * -(-(limit + 1) // bs) <= free:
        plan = _segments(sim, remaining, token_of, ctx, low, limit, budget, sms)
    else:
        # The phase is planned by time first: most end at the horizon, long before the KV
        # limit, and the blocks of the steps planned decide whether that limit cuts them. A
        # plan within the limit is the one planned up to it (its segments end where they
        # end, at finishes or the horizon); else it is planned again, up to the limit.
        room = slack()
        caps = remaining if past_finishes else None
        blocks = kv_blocks(bs, room, caps)
        plan = None
        if blocks(limit) <= free:
            pass  # the limit fits: planned once below
        elif not math.isinf(budget):
            plan = _segments(sim, remaining, token_of, ctx, low, limit, budget, sms)
            if blocks(plan[0]) > free:
                plan = None
                limit = steps_that_fit(blocks, free, limit)
        else:  # no horizon: the phase runs to the limit
            limit = steps_that_fit(blocks, free, limit)
        if limit < 1:
            return 0, [], None
        if plan is None:
            plan = _segments(sim, remaining, token_of, ctx, low, limit, budget, sms)
    done, pieces, segments, counts, order = plan
    if len(pieces) == 1:
        durations = pieces[0]
    elif all(isinstance(p, list) for p in pieces):
        durations = [d for p in pieces for d in p]
    else:
        durations = np.concatenate([np.asarray(p, dtype=np.float64) for p in pieces])
    listed = members()
    phase = DecodePhase(0, segments, listed, remaining)
    if low < done:  # a member finished inside, so the loop sorted them by finish
        # Latest to finish first: each segment's members are the first ``counts`` of these.
        phase.by_finish = order[::-1]
        phase.counts = counts
    return done, durations, phase


def _segments(
    sim: Simulator,
    remaining: list[int],
    token_of: Callable[[int], int],
    ctx: int,
    low: int,
    limit: int,
    budget: float,
    sms: int,
) -> tuple[int, list, list[tuple[BatchShape, int]], list[int], list[int] | None]:
    """The phase's segments up to ``limit`` iterations and ``budget`` seconds: iterations,
    duration pieces, segments, members decoding in each, and the members by finish (None
    when none finishes inside)."""
    n = len(remaining)
    # Members by finish, once the phase reaches its first finish: segments end where they
    # do. Most phases end at the horizon before it, and need no order.
    order = None
    gone = 0  # members finished before the current segment
    start, done, left = 0, 0, budget
    pieces: list = []
    segments: list[tuple[BatchShape, int]] = []
    counts: list[int] = []  # members decoding in each segment
    while start < limit:
        bound = low if low < limit else limit
        if order is None and low <= start < limit:
            order = sorted(range(n), key=remaining.__getitem__)
        if order is not None:
            bound = limit
            while gone < n and remaining[order[gone]] <= start:
                ctx -= token_of(order[gone])
                gone += 1
            if gone < n and remaining[order[gone]] < limit:
                bound = remaining[order[gone]]
        active = n - gone
        counts.append(active)
        # The segment's first iteration attends to each active member's tokens, grown by
        # ``start``, plus the new one.
        seg_ctx = ctx + active * (start + 1)
        steps, durations = run_length(sim, active, seg_ctx, bound - start, left, sms, None, 0)
        if durations is None:
            durations = sim.model.predict_decode_run(active, seg_ctx, steps, sms, None, 0)
        durations = durations[:steps]
        segments.append((BatchShape.decode(active, seg_ctx), steps))
        pieces.append(durations)
        done += steps
        spent = sum(durations) if not math.isinf(left) else 0.0  # in order, as a cumsum
        if steps < bound - start or spent >= left:
            break
        left -= spent
        start = bound
    return done, pieces, segments, counts, order
