"""Runs through arrivals: steady decoding, the finishes and arrivals inside it and the steps
that admit the queue, as one run.

A steady decode batch, or a batch with prefill chunks and the steady decoding it promises
after it (``Batch.then``), may carry its policy's admission rule (``Batch.admits_arrivals``,
an ``ArrivalAdmission``): how each of its steps goes while every running request decodes or
prefills its prompt in chunks. The simulator knows the workload's arrivals in advance, so it
applies the rule at every step boundary where something changes (an arrival, a finish): the
decodes' next tokens, the next chunks of the prompts being prefilled, then the queue's
requests in order while each one's first chunk fits. Between those boundaries the batch is the
same steady decode batch, or the step after a chunk. One run then stands for many decisions:
segments of steady decoding, and the one-step mixed batches that prefill.

KV blocks are counted exactly: a decoding member holds ceil(tokens / block size) blocks, so
the blocks of all of them at a step follow from a count per residue of their tokens, and a
finished member's blocks return at its finish. The run ends where the rule does not cover the
next step: a decode's or a chunk's block that does not fit (the policy preempts), a queued
request that may hit the prefix cache, every member finished, or ``RUN_STEPS``. The policy then
decides afresh, as it would at that step. The blocks are taken when the run ends, after the
finished members free theirs (no one reads the cache while a simulated run executes).
"""

from __future__ import annotations

import heapq
import math
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from policies import Batch, BatchShape, Lane, Request, Status
from twin.errors import SchedulingError
from twin.sim.fast_forward import run_length

if TYPE_CHECKING:
    from twin.sim.simulator import SimRun, Simulator

# A run through arrivals ends after this many steps: longer ones hold more segments until they
# end than their one event saves (measured on day-scale and overloaded runs).
RUN_STEPS = 2048
# How much of a long queue a run through arrivals looks at (it admits one request a finish).
QUEUE_HEAD = 256
# Runs up to this many steps keep their durations as plain floats (``Simulator._new_run``
# sums those in a Python loop; longer ones are arrays).
_LIST_STEPS = 64


@dataclass(slots=True)
class ArrivalPhase:
    """A run's steps after its first: ``segments`` (each a batch's shape and iterations: steady
    decode batches, and the one-step mixed batches that prefill), ``ids`` the requests that
    get a token at each of a segment's steps (a mixed step's decodes, then the prompts it
    completes), and ``groups`` each mixed step's prefill chunks as (request, start, length)
    (None for a decode segment).

    ``members`` are every request the run gives tokens, in admission order (the first batch's
    decodes, its prompts, then the queue's as their prefills complete); ``starts`` the step of
    each one's first token in the run and ``caps`` how many tokens each has left to make from
    there; ``first_ids`` the requests that get a token at the first step. ``joins`` are the
    steps that admit queued requests, and ``filling`` the prompts still being prefilled when
    the run ends (with the tokens done)."""

    segments: list[tuple[BatchShape, int]]
    ids: list[array]
    groups: list[list[tuple[Request, int, int]] | None]
    members: list[Request]
    starts: list[int]
    caps: list[int]
    first_ids: list[int]
    joins: list[tuple[int, Request]]  # (step, a queued request it admits)
    filling: list[tuple[Request, int]]
    offset: int = 1  # the first step, which prefills (rows and counts as in ``DecodePhase``)

    @property
    def runs(self) -> int:
        return self.offset + len(self.segments)


def plan_through_arrivals(
    sim: Simulator,
    lane: Lane,
    batch: Batch,
    promise: Batch,
    shape: BatchShape,
    sms: int,
    now: float,
    first: float,
) -> SimRun | None:
    """The run of ``batch`` (its first step ``first`` seconds) and of the steady decoding its
    policy promised after it (``promise``: ``batch.then``, or the steady batch itself), through
    the finishes and arrivals the promise's ``ArrivalAdmission`` covers; None when the run
    would pass none of them (the caller plans it as before)."""
    rule = promise.admits_arrivals
    kv = sim.kv
    bs = kv.block_size
    decodes = batch.decode
    chunks = batch.prefill
    n_dec = len(decodes)
    n_all = n_dec + len(chunks)
    if len(sim.running) != n_all or len(sim._pending) >= 1 << 31:
        return None  # a running request outside the batch: not the state the rule is about
    members: list[Request] = decodes + [c.request for c in chunks]
    # Every member holds the blocks of its tokens and no more, so its blocks at each step
    # follow from its tokens: the room each table has left says so.
    room = kv.room(decodes) if decodes else [0]
    if min(room) < 0 or max(room) >= bs:
        return None
    held = sum(-(-r.kv_tokens // bs) for r in decodes)  # room in [0, bs): held exactly
    for c in chunks:
        blocks = kv.held(c.request.id)
        if not 0 <= blocks * bs - c.start - c.length < bs:
            return None
        held += blocks
    capacity = kv.free_blocks + held  # blocks the members may hold: theirs and the free ones
    caps = [r.output_tokens - r.generated for r in members]
    bases = [r.kv_tokens for r in decodes] + [c.start + c.length - 1 for c in chunks]
    starts = [0] * n_all
    decoding = _Decoding(bs, sim.tokens.ids.typecode)
    for m in range(n_all):
        if caps[m] > 1:
            decoding.join(m, members[m].id, bases[m], caps[m] - 1)
    active, heap, blocks_at = decoding.ids, decoding.heap, decoding.blocks_at

    pending, times = sim._pending, sim._arrival_times
    total = len(pending)
    i = sim._arrived
    # The queue's head: the waiting requests (the first QUEUE_HEAD of a long queue, a run
    # admitting them all ends there), then the arrivals as they come.
    queue = sim.waiting[:QUEUE_HEAD]
    cut = len(sim.waiting) > QUEUE_HEAD
    head = 0
    limit = min(sim.config.max_steps_per_event, promise.steady_steps + 1, RUN_STEPS)
    model = sim.model
    predict_run = model.predict_decode_run
    reserve = rule.reserve_blocks
    caching = kv.prefix_caching

    segments: list[tuple[BatchShape, int]] = []
    seg_ids: list[array] = []
    groups: list[list[tuple[Request, int, int]] | None] = []
    joins: list[tuple[int, Request]] = []
    flat = [first]  # every step's predicted seconds, in order
    passed = 0  # finishes and arrivals the run went through
    filling: list[list] = []  # admitted prompts not yet prefilled: [request, tokens done]
    fill_held = 0  # the blocks they hold
    s, t = 1, now + first
    while decoding.n and s < limit:
        n = decoding.n
        while i < total and times[i] <= t:  # arrived by this boundary: queued, or refused
            req = pending[i]
            i += 1
            if not sim.rejection(req.prompt_tokens, req.output_tokens):
                if not cut:
                    queue.append(req)
                passed += 1
        if cut and head == len(queue):
            break  # the rest of a long queue was left out of this run
        # The policy's batch at this boundary: every decode's next token, the next chunks of
        # the prompts being prefilled, then the queue's requests in order while they fit.
        used = blocks_at(s) + fill_held
        if used > capacity:
            break  # a decode's block does not fit: the policy preempts
        free = capacity - used
        tokens_left = rule.token_budget - n
        chunks_here: list[tuple[Request, int, int]] = []
        preempts = False
        for req, done in filling:
            if tokens_left <= 0:
                break
            length = req.prefill_target - done
            if length > tokens_left:
                length = tokens_left
            need = -(-(done + length) // bs) - -(-done // bs)
            if need > free:
                preempts = True  # the policy preempts for its chunk
                break
            chunks_here.append((req, done, length))
            tokens_left -= length
            free -= need
        if preempts:
            break
        new: list[Request] = []
        if head < len(queue):
            seqs_left = rule.max_seqs - n - len(filling)
            while head < len(queue) and tokens_left > 0 and seqs_left > 0:
                req = queue[head]
                if caching and req.block_hashes:
                    new = None  # a cached prefix may shorten its chunk: asked afresh
                    break
                target = req.prefill_target
                length = target if target < tokens_left else tokens_left
                need = -(-length // bs)
                if need + reserve > free:
                    break  # the KV cache keeps it out (and everyone behind it)
                chunks_here.append((req, 0, length))
                new.append(req)
                head += 1
                tokens_left -= length
                seqs_left -= 1
                free -= need
            if cut and head == len(queue):
                new = None  # the next request of a long queue is beyond what this run saw
            if new is None:
                break
        if chunks_here:
            completing = [r for r, at, length in chunks_here if at + length >= r.prefill_target]
            mixed = BatchShape(
                prefill_q=tuple(length for _, _, length in chunks_here),
                prefill_ctx=tuple(start for _, start, _ in chunks_here),
                n_decode=n,
                decode_ctx_sum=decoding.ctx_at(s),
                sampled=n + len(completing),
            )
            step = model.predict(mixed, sms, None, 0)
            segments.append((mixed, 1))
            seg_ids.append(active + array(active.typecode, [r.id for r in completing]))
            groups.append(chunks_here)
            joins.extend((s, r) for r in new)
            flat.append(step)
            t += step
            # The continued chunks are the first of ``filling``, in its order; the new
            # requests' chunks follow them.
            continued = len(chunks_here) - len(new)
            for entry, (_, start, length) in zip(
                filling[:continued], chunks_here[:continued], strict=True
            ):
                entry[1] = start + length
            filling += [[req, length] for req, _, length in chunks_here[continued:]]
            left = []
            for entry in filling:
                req, done = entry
                target = req.prefill_target
                if done < target:
                    left.append(entry)
                    continue
                m = len(members)
                cap = req.output_tokens - req.generated
                members.append(req)
                caps.append(cap)
                starts.append(s)
                b = target - s - 1
                bases.append(b)
                if cap > 1:
                    decoding.join(m, req.id, b, s + cap - 1)
            filling = left
            fill_held = sum(-(-done // bs) for _, done in filling)
            s += 1
        elif filling:
            break  # prompts left half prefilled with no budget for them: asked afresh
        else:
            # Steady decoding until the next finish, or the step under way at the next arrival
            # (while the queue's head is kept out, an arrival only queues behind it).
            due = times[i] if i < total and head == len(queue) else math.inf
            bound = heap[0][0] + 1
            k = (bound if bound < limit else limit) - s
            if blocks_at(s + k - 1) > capacity:  # blocks run out first: up to the last that fit
                lo, hi = 1, k  # step s's grants fit (checked above), step s + k - 1's do not
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if blocks_at(s + mid - 1) <= capacity:
                        lo = mid
                    else:
                        hi = mid
                k = lo  # the next boundary's check ends the run
            if k < 1:
                break
            ctx = decoding.ctx_at(s)
            steps, durations = run_length(sim, n, ctx, k, due - t, sms, None, 0)
            if durations is None:
                durations = predict_run(n, ctx, steps, sms, None, 0)
            durations = durations[:steps]
            segments.append((BatchShape.decode(n, ctx), steps))
            seg_ids.append(active[:])
            groups.append(None)
            if isinstance(durations, list):
                flat += durations
                t += sum(durations)
            else:
                flat += durations.tolist()
                t += float(durations.sum())
            s += steps
        passed += decoding.drop_finished(s, members, bases)
    if not passed and not joins:
        return None
    durations = flat if s <= _LIST_STEPS else np.array(flat)
    run = sim._new_run(lane, batch, shape, sms, None, now, s, durations)
    first_ids = [r.id for r in members[:n_all]]
    run.phase = ArrivalPhase(
        segments, seg_ids, groups, members, starts, caps, first_ids, joins,
        [(req, done) for req, done in filling],
    )  # fmt: skip
    return run


class _Decoding:
    """The run's decoding members: their ids in admission order, a heap of (last token's
    step, member), and what their KV blocks and context follow from.

    A member decoding at step s holds base + s tokens and, after that step's grant,
    ceil((base + 1 + s) / bs) blocks: with base + 1 = q * bs + r, that is q + ceil((r + s) / bs).
    Members are kept as the sum of q and a count per r, so the blocks of all of them at a
    step cost O(1)."""

    __slots__ = ("bs", "ids", "heap", "residues", "quotients", "based", "n")

    def __init__(self, bs: int, typecode: str) -> None:
        self.bs = bs
        self.ids = array(typecode)  # as the token log stores them: a segment's copy is a memcpy
        self.heap: list[tuple[int, int]] = []
        self.residues = [0] * bs
        self.quotients = 0
        self.based = 0
        self.n = 0

    def join(self, m: int, rid: int, base: int, last: int) -> None:
        q, r = divmod(base + 1, self.bs)
        self.quotients += q
        self.residues[r] += 1
        self.based += base
        self.n += 1
        self.ids.append(rid)
        heapq.heappush(self.heap, (last, m))

    def drop_finished(self, s: int, members: list[Request], bases: list[int]) -> int:
        """Take out the members whose last token came before step ``s``; how many."""
        heap, gone = self.heap, 0
        while heap and heap[0][0] < s:
            _, m = heapq.heappop(heap)
            self.ids.remove(members[m].id)
            b = bases[m]
            q, r = divmod(b + 1, self.bs)
            self.quotients -= q
            self.residues[r] -= 1
            self.based -= b
            self.n -= 1
            gone += 1
        return gone

    def ctx_at(self, s: int) -> int:
        """Context a decode step at ``s`` attends to: every member's tokens and its new one."""
        return self.based + self.n * (s + 1)

    def blocks_at(self, s: int) -> int:
        bs, residues = self.bs, self.residues
        a, b = divmod(s, bs)
        held = self.quotients + self.n * (a + 1) + (sum(residues[bs + 1 - b :]) if b > 1 else 0)
        return held - residues[0] if b == 0 else held


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
    running, waiting, kv = sim.running, sim.waiting, sim.kv
    for step, req in phase.joins:
        began = float(ends[step - 1])
        try:
            if req.status is not Status.WAITING:
                raise ValueError
            waiting.remove(req)
        except ValueError:
            raise SchedulingError(
                f"request {req.id} was planned to join at {began:.6f} s but is not waiting"
            ) from None
        running.append(req)
        req.status = Status.RUNNING
        if math.isnan(req.scheduled_s):
            req.scheduled_s = began
            sim._scheduled(req)
        kv.admit(req, 0)
    n_first = len(batch.decode) + len(batch.prefill)
    members = phase.members
    starts, caps = phase.starts, phase.caps
    for m in range(n_first, len(members)):  # prefilled in the run: their first token then
        req = members[m]
        req.kv_tokens = req.prefill_target - 1  # that token writes no KV
        if req.generated == 0:
            req.first_token_s = float(ends[starts[m]])
    for req, done in phase.filling:
        req.kv_tokens = done
    keep = sim.keep_token_times
    finished: list[tuple[int, int]] = []
    alive: list[int] = []  # the members still decoding when the run ends
    for m, req in enumerate(members):
        start, cap = starts[m], caps[m]
        made = steps - start
        if made >= cap:
            made = cap
            finished.append((start + cap - 1, m))
        else:
            alive.append(m)
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
    for step, m in finished:
        sim._finish(members[m], now if step == steps - 1 else float(ends[step]))
    # The blocks of the run's tokens, taken now that the finished have freed theirs: the
    # tables stepping leaves, block for block in number (no one reads them during the run).
    for m in alive:
        req = members[m]
        kv.grow(req.id, req.kv_tokens)
        if m >= n_first:
            kv.commit(req, req.prefill_target)
    for req, tokens in phase.filling:
        kv.grow(req.id, tokens)
        kv.commit(req, tokens)
    n_dec = len(batch.decode)
    for m in alive:
        if m >= n_dec:
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
            prefill = tuple((r.id, start, length) for r, start, length in group)
            completes = sum(start + length >= r.prefill_target for r, start, length in group)
            decodes = tuple(ids[: len(ids) - completes])
            out.append((lane.value, split, (prefill, decodes, ()), k))
