"""Runs through arrivals: a mixed step and the steady decoding after it, then the arrivals the
policy admits as they come, as one run.

A batch with prefill chunks may carry the policy's promise of the steady decode batch after it
(``Batch.then``), and that promise may say how the policy admits arrivals while nobody waits
(``Batch.admits_arrivals``, an ``ArrivalAdmission``). The simulator knows the workload's
arrivals in advance, so it can plan past them: at the step boundary after an arrival, the
next batch is that arrival's whole prompt beside every running decode, and the batch after it
the steady decoding of all, with the same promise. One run then stands for many decisions:
segments of steady decoding cut at finishes, and the mixed steps where arrivals join.

The run ends at the first boundary where the rule does not admit every arrival due (the
token budget, a free sequence, a prompt that may hit the prefix cache), where the blocks of
the next steps might not fit, at the step limit, or when every member has finished: the
policy then decides afresh, as it would at that step. Blocks are counted as if finished
members kept theirs and each member's last block were full (every block of the run is taken
when it starts), so the KV test never passes where stepping would not.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from policies import Batch, BatchShape, KVCache, Lane, Request, Status
from twin.errors import SchedulingError
from twin.sim.fast_forward import run_length

if TYPE_CHECKING:
    from twin.sim.simulator import SimRun, Simulator

# Runs up to this many steps keep their durations as plain floats (``Simulator._new_run``
# sums those in a Python loop; longer ones are arrays).
_LIST_STEPS = 64


@dataclass(slots=True)
class ArrivalPhase:
    """A run's steps after its first: ``segments`` (each a batch's shape and iterations: steady
    decode batches, and the one-step mixed batches where arrivals join), ``ids`` the requests
    that get a token at each of a segment's steps (a mixed step's decodes, then its arrivals),
    and ``groups`` each mixed step's arrivals (None for a decode segment).

    ``members`` are every request the run advances, in admission order (the first batch's
    decodes, its prompts, then the arrivals); ``starts`` the step of each one's first token in
    the run and ``caps`` how many tokens each has left to make from there; ``first_ids`` the
    requests that get a token at the first step."""

    segments: list[tuple[BatchShape, int]]
    ids: list[list[int]]
    groups: list[list[Request] | None]
    members: list[Request]
    starts: list[int]
    caps: list[int]
    first_ids: list[int]
    joins: list[tuple[int, list[Request]]]  # (step, the arrivals whose prompts it prefills)
    offset: int = 1  # the first step, which prefills (rows and counts as in ``DecodePhase``)

    @property
    def runs(self) -> int:
        return self.offset + len(self.segments)


def plan_through_arrivals(
    sim: Simulator, lane: Lane, batch: Batch, shape: BatchShape, sms: int, now: float, first: float
) -> SimRun | None:
    """The run of ``batch`` (first step ``first`` seconds) and what its policy promised after
    it, through the arrivals it admits; None when no arrival joins (the caller plans the
    batch and its promise up to the next arrival, as without this)."""
    then = batch.then
    rule = then.admits_arrivals
    pending, times = sim._pending, sim._arrival_times
    total = len(pending)
    i = sim._arrived
    while i < total and sim.rejection(pending[i].prompt_tokens, pending[i].output_tokens):
        i += 1
    if i == total:
        return None
    decodes = batch.decode
    chunks = batch.prefill
    n_dec = len(decodes)
    n_all = n_dec + len(chunks)
    kv = sim.kv
    bs = kv.block_size
    free = kv.free_blocks
    reserve = rule.reserve_blocks
    head = pending[i]
    # The next arrival must be able to join beside every member (before any finishes), or the
    # run is planned as before: a cheap test that keeps planning twice rare.
    head_blocks = -(-head.prompt_tokens // bs)
    if (
        head.prompt_tokens > rule.token_budget - n_all
        or n_all >= rule.max_seqs
        or (free - 2 * n_all - head_blocks - reserve - 1) * bs < n_dec
    ):
        return None

    members: list[Request] = decodes + [c.request for c in chunks]
    caps = [r.output_tokens - r.generated for r in members]
    starts = [0] * n_all
    joiner_bases: list[int] = []

    def base_of(m: int) -> int:
        # A member's tokens in KV before step s are base + s while it decodes.
        if m < n_dec:
            return members[m].kv_tokens
        if m < n_all:
            c = chunks[m - n_dec]
            return c.start + c.length - 1
        return joiner_bases[m - n_all]

    heap = [(c - 1, m) for m, c in enumerate(caps) if c > 1]
    heapq.heapify(heap)
    active = [members[m].id for m in range(n_all) if caps[m] > 1]
    n = len(active)
    based = shape.decode_ctx_sum - n_dec + sum(c.start + c.length - 1 for c in chunks)
    for m in range(n_all):
        if caps[m] <= 1:
            based -= base_of(m)
    written = n_dec  # KV tokens the run's decode steps write (the first step's decodes so far)
    held = n_all  # one block of slack a member: its last block may be partly filled
    prompt_blocks = 0
    limit = min(sim.config.max_steps_per_event, then.steady_steps + 1)
    model = sim.model
    predict_run = model.predict_decode_run

    segments: list[tuple[BatchShape, int]] = []
    seg_ids: list[list[int]] = []
    groups: list[list[Request] | None] = []
    joins: list[tuple[int, list[Request]]] = []
    flat = [first]  # every step's predicted seconds, in order
    s, t = 1, now + first
    while n:
        due = times[i] if i < total else math.inf
        if due > t:  # steady decoding until the step under way at the next arrival ends
            bound = heap[0][0] + 1 if heap else limit
            room = ((free - held - prompt_blocks) * bs - written) // n
            k = min(bound, limit) - s
            if room < k:
                k = room
            if k < 1:
                break
            ctx = based + n * s + n
            steps, durations = run_length(sim, n, ctx, k, due - t, sms, None, 0)
            if durations is None:
                durations = predict_run(n, ctx, steps, sms, None, 0)
            durations = durations[:steps]
            segments.append((BatchShape.decode(n, ctx), steps))
            seg_ids.append(active.copy())
            groups.append(None)
            if isinstance(durations, list):
                flat += durations
                t += sum(durations)
            else:
                flat += durations.tolist()
                t += float(durations.sum())
            written += n * steps
            s += steps
            gone, bases = _drop_finished(heap, s, active, members, base_of)
            n -= gone
            based -= bases
            if t < due and s < bound:
                break  # cut by the KV blocks or the step limit, not by a finish
            if t < due:
                continue
        if s >= limit or not n:
            break  # the step limit, or every member finished: an arrival finds the GPU idle
        # Arrivals are due at this boundary: the policy's next batch, if its rule admits all.
        tokens_left = rule.token_budget - n
        seqs_left = rule.max_seqs - n
        group: list[Request] = []
        j = i
        step_held, step_blocks = held, prompt_blocks
        admitted = True
        while j < total and times[j] <= t:
            req = pending[j]
            j += 1
            if sim.rejection(req.prompt_tokens, req.output_tokens):
                continue  # refused on arrival: never waits
            need = -(-req.prompt_tokens // bs)
            if (
                req.content is not None
                or req.prompt_ids is not None
                or tokens_left <= 0
                or seqs_left <= 0
                or req.prompt_tokens > tokens_left
                or (free - step_held - step_blocks - need - reserve) * bs < written + n
            ):
                admitted = False
                break
            group.append(req)
            tokens_left -= req.prompt_tokens
            seqs_left -= 1
            step_held += 1
            step_blocks += need
        if not admitted:
            break
        i = j
        if not group:
            continue  # every arrival due was refused: decoding goes on
        prompts = tuple(r.prompt_tokens for r in group)
        mixed = BatchShape(
            prefill_q=prompts,
            prefill_ctx=(0,) * len(group),
            n_decode=n,
            decode_ctx_sum=based + n * s + n,
            sampled=n + len(group),
        )
        step = model.predict(mixed, sms, None, 0)
        segments.append((mixed, 1))
        seg_ids.append(active + [r.id for r in group])
        groups.append(group)
        joins.append((s, group))
        flat.append(step)
        t += step
        written += n
        held, prompt_blocks = step_held, step_blocks
        for req in group:
            m = len(members)
            members.append(req)
            caps.append(req.output_tokens)
            starts.append(s)
            joiner_bases.append(req.prompt_tokens - s - 1)
            if req.output_tokens > 1:
                active.append(req.id)
                heapq.heappush(heap, (s + req.output_tokens - 1, m))
                based += req.prompt_tokens - s - 1
                n += 1
        s += 1
        gone, bases = _drop_finished(heap, s, active, members, base_of)
        n -= gone
        based -= bases
    if not joins:
        return None
    durations = flat if s <= _LIST_STEPS else np.array(flat)
    run = sim._new_run(lane, batch, shape, sms, None, now, s, durations)
    first_ids = [r.id for r in members[:n_all]]
    run.phase = ArrivalPhase(segments, seg_ids, groups, members, starts, caps, first_ids, joins)
    return run


def _drop_finished(heap: list, s: int, active: list[int], members: list[Request], base_of):
    """Take the members whose last token came before step ``s`` out of ``active``: how many,
    and the sum of their bases."""
    gone = bases = 0
    while heap and heap[0][0] < s:
        _, m = heapq.heappop(heap)
        active.remove(members[m].id)
        bases += base_of(m)
        gone += 1
    return gone, bases


def grow_arrival_run(kv: KVCache, batch: Batch, phase: ArrivalPhase, steps: int) -> None:
    """KV for a run through arrivals, taken when it starts: every member to the tokens it
    holds when it finishes or the run ends (the arrivals admitted first, from no blocks)."""
    full = [r for r in batch.decode if r.output_tokens - r.generated >= steps]
    kv.grow_decodes(full, steps)
    if len(full) < len(batch.decode):
        for r in batch.decode:
            if r.output_tokens - r.generated < steps:
                kv.grow(r.id, r.kv_tokens + r.output_tokens - r.generated)
    for chunk in batch.prefill:
        req = chunk.request
        left = max(0, req.output_tokens - req.generated - 1)
        kv.grow(req.id, chunk.start + chunk.length + min(left, steps - 1))
    for step, group in phase.joins:
        for req in group:
            kv.admit(req, 0)
            made = min(req.output_tokens, steps - step)
            kv.grow(req.id, req.prompt_tokens + made - 1)
            kv.commit(req, req.prompt_tokens)


def apply_arrival_run(sim: Simulator, run: SimRun, now: float, step_ends) -> None:
    """``run`` ended at ``now`` with its steps ending at ``step_ends``: its arrivals join the
    running requests when their step began, every member gets its tokens, the finished leave
    at their last token's time, and the run is recorded as the runs it stands for."""
    del sim.in_flight[run.lane]
    batch, phase = run.batch, run.phase
    steps = run.steps
    ends = np.asarray(step_ends, dtype=np.float64)
    first_end = float(ends[0])
    for chunk in batch.prefill:
        req = chunk.request
        req.in_flight = False
        req.kv_tokens = chunk.start + chunk.length - 1  # its first token writes no KV
        if req.generated == 0:
            req.first_token_s = first_end
    running, waiting = sim.running, sim.waiting
    for step, group in phase.joins:
        began = float(ends[step - 1])
        for req in group:
            if req.status is not Status.WAITING or req not in waiting:
                raise SchedulingError(
                    f"request {req.id} was planned to join at {began:.6f} s but has not arrived"
                )
            waiting.remove(req)
            running.append(req)
            req.status = Status.RUNNING
            if math.isnan(req.scheduled_s):
                req.scheduled_s = began
                sim._scheduled(req)
            req.kv_tokens = req.prompt_tokens - 1
            req.first_token_s = float(ends[step])
    keep = sim.keep_token_times
    finished: list[tuple[int, int]] = []
    starts, caps = phase.starts, phase.caps
    for m, req in enumerate(phase.members):
        start, cap = starts[m], caps[m]
        made = steps - start
        if made >= cap:
            made = cap
            finished.append((start + cap - 1, m))
        req.kv_tokens += made
        req.generated += made
        if keep:
            req.token_times.append(ends[start : start + made] if made > 1 else float(ends[start]))
    sim.decode_steps += steps if batch.decode else steps - 1
    log = sim.tokens
    log.add(phase.first_ids, first_end)
    i = 1
    for (_, k), ids in zip(phase.segments, phase.ids, strict=True):
        log.add(ids, ends[i : i + k] if k > 1 else float(ends[i]))
        i += k
    finished.sort()
    members = phase.members
    for step, m in finished:
        sim._finish(members[m], now if step == steps - 1 else float(ends[step]))
    done = {m for _, m in finished}
    n_dec = len(batch.decode)
    for m in range(n_dec, len(members)):
        if m not in done:
            sim._prefill_done(members[m])
    sim._record(run, step_ends)
    sim._sample()


def arrival_run_decisions(sim: Simulator, lane: Lane, batch: Batch, run: SimRun) -> None:
    """The decisions a run through arrivals stands for: its first batch, then each segment's
    decode batch and each mixed step's (its arrivals' prompts beside the decodes)."""
    split = str(sim.partition)
    out = sim.decisions
    out.append((lane.value, split, batch.describe(), 1))
    phase = run.phase
    for (_, k), ids, group in zip(phase.segments, phase.ids, phase.groups, strict=True):
        if group is None:
            out.append((lane.value, split, ((), tuple(ids), ()), k))
        else:
            prefill = tuple((r.id, 0, r.prompt_tokens) for r in group)
            out.append((lane.value, split, (prefill, tuple(ids[: len(ids) - len(group)]), ()), k))
