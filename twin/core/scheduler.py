"""The scheduling core both engines run: serving state, and the policy's decisions applied to it.

The core owns the queues (``waiting``, ``running``), the KV cache accounting, the partition
and the lanes' running batches. It is where requests arrive (``arrive``: admitted, or
rejected by ``rejection``), where the policy is asked for the partition and for each free
lane's batch (``_dispatch``; a switch between aggregated and split mode waits until the lanes
drain), where a batch's preemptions and KV are committed (``_launch``), where a finished batch
is applied (``_apply``: tokens, finishes, aborts) and where every batch and state change is
recorded. It imports neither simpy nor torch.

An engine is the core plus an executor. It subclasses ``SchedulingCore`` and supplies the
clock (``now``), how a batch will run (``_plan``: its SMs, iterations and predicted time) and
how it starts (``_execute``); it calls ``_apply`` when a batch ends and ``_dispatch`` after.
The simulator (``twin.sim``) does this on a SimPy clock with the latency model's times; the
runtime (``gpu_runtime.engine``) on the device, on a wall or virtual clock. The remaining
hooks (``_scheduled``, ``_emit``, ``_request_done``, ``_prefill_done``, ``_kv_for``,
``_free_kv``, ``_co_runner``, ``_check_partition``, ``view``) default to one GPU with nothing
to stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np

from policies import Batch, BatchShape, EngineView, KVCache, Lane, Policy, Request, Slo, Status
from policies.admission import reject, rejection_reason
from policies.block_hash import attach_hashes
from policies.view import LatencyModel
from twin.core.records import DecodePhase, IterationLog, Run, TimelineLog
from twin.core.tokens import TokenLog
from twin.errors import SchedulingError

DONE = (Status.FINISHED, Status.REJECTED, Status.ABORTED)


@dataclass
class EngineStats:
    """Counters a server exposes; updated on the engine's thread, read anywhere."""

    finished: int = 0
    aborted: int = 0
    rejected: int = 0
    prompt_tokens: int = 0  # of finished requests
    generated_tokens: int = 0  # streamed to clients (the runtime counts them)
    iterations: int = 0  # batches executed (a steady run of k decode steps counts once)
    preemptions: int = 0
    partition_changes: int = 0


def same_state(a: EngineView, b: EngineView) -> bool:
    """Whether two views show the same engine state (lists and batches compared by item)."""
    for name in _STATE_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is not y and x != y:
            return False
    return True


_STATE_FIELDS = tuple(f.name for f in fields(EngineView) if f.name != "partition_settled")


def _by_tokens(reqs: list[Request], steps: int, start: int) -> list[tuple[int, int, list]]:
    """``reqs`` decoding from step ``start`` for up to ``steps`` steps, grouped by how many
    tokens each makes (all ``steps`` unless it finishes first): (start, tokens, requests)."""
    full = [r for r in reqs if r.output_tokens - r.generated >= steps]
    groups = [(start, steps, full)]
    if len(full) < len(reqs):
        short: dict[int, list[Request]] = {}
        for r in reqs:
            n = r.output_tokens - r.generated
            if n < steps:
                short.setdefault(n, []).append(r)
        groups += [(start, n, group) for n, group in short.items()]
    return groups


def _advance(
    reqs: list[Request],
    steps: int,
    start: int,
    step_ends: Sequence[float],
    finished: list[Request],
    finish_at: dict[int, float],
) -> None:
    """``reqs`` each decoded from step ``start`` for ``steps`` steps or until it finished:
    what ``_by_tokens`` and ``_apply_steps`` do group by group, in one pass, for runs whose
    tokens need no per-request times or streaming. The finished join ``finished`` in the
    groups' order (those decoding every step first, then by first-seen token count). Their
    ``in_flight`` flags are the caller's to clear."""
    if not reqs or steps < 1:
        return
    short: dict[int, list[Request]] | None = None
    last = float(step_ends[start + steps - 1])
    for req in reqs:
        n = req.output_tokens - req.generated
        if n > steps:
            req.kv_tokens += steps
            req.generated += steps
            continue
        req.kv_tokens += n
        req.generated += n
        if n == steps:
            finished.append(req)
            finish_at[req.id] = last
        elif short is None:
            short = {n: [req]}
        else:
            short.setdefault(n, []).append(req)
    if short:
        for n, group in short.items():
            finished += group
            end = float(step_ends[start + n - 1])
            for req in group:
                finish_at[req.id] = end


class SchedulingCore:
    # Whether the decode requests of a run on the one lane of an aggregated partition are
    # flagged ``in_flight``. Nothing schedules them while it runs (a policy is offered only a
    # free lane, and a switch to a split partition waits for the lane to drain), so an engine
    # may leave them unflagged; ``abort`` then finds them in the lane's batch. The runtime
    # flags them: its server and loop read the flag.
    flags_aggregated_runs = True

    def __init__(
        self,
        policy: Policy,
        model: LatencyModel,
        kv: KVCache,
        slo: Slo = Slo(),
        max_model_len: int | None = None,
        record_decisions: bool = False,
    ) -> None:
        self.policy = policy
        self.model = model
        self.gpu = model.gpu
        self.kv = kv
        self.slo = slo
        self.max_model_len = max_model_len
        self.record_decisions = record_decisions
        self.partition = self.gpu.aggregated()
        self.requests: list[Request] = []  # every arrived request, in arrival order
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.in_flight: dict[Lane, Run] = {}
        self.decisions: list[tuple] = []
        self.stats = EngineStats()
        self._by_id: dict[int, Request] = {}
        self._aborting: set[int] = set()
        self._arrived = 0
        self._dispatching = False
        self._again = False
        self._iters = IterationLog()
        self._timeline = TimelineLog()
        self.tokens = TokenLog()  # which requests got tokens when, for the metrics
        # Each request's own token times (``Request.token_times``): servers stream and time
        # tokens from them; a simulation of millions of requests may leave them out.
        self.keep_token_times = True
        self.decode_steps = 0  # iterations run that decoded (SGLang's new_token_ratio decays)

    # ----------------------------------------------------------------- the executor's part
    def now(self) -> float:
        raise NotImplementedError

    def _plan(
        self, lane: Lane, batch: Batch, shape: BatchShape, sms: int, co: Run | None, now: float
    ) -> Run:
        """How ``batch`` will run on ``lane`` with ``sms`` SMs beside ``co``: its iterations
        (``steps``, for which its decode requests' KV is then committed) and predicted times."""
        raise NotImplementedError

    def _execute(self, run: Run, kv: KVCache) -> None:
        """Start ``run`` (now in ``in_flight``); the executor calls ``_apply`` when it ends."""
        raise NotImplementedError

    # ----------------------------------------------------------------- arrivals
    def arrive(self, requests: Iterable[Request]) -> None:
        """Requests arriving now, in arrival order: each is admitted or rejected, then every
        free lane is offered to the policy. Workloads of any kind (a trace, a closed-loop
        client sending its next request when one is done) enter the engine here."""
        for req in requests:
            if req.id in self._by_id:
                raise SchedulingError(f"request id {req.id} is already in the engine")
            self._by_id[req.id] = req
            self.requests.append(req)
            self._arrived += 1
            reason = self.rejection(req.prompt_tokens, req.output_tokens)
            if reason is None:
                if self.kv.prefix_caching:
                    self._name_blocks(req)
                self.waiting.append(req)
            else:
                self._reject(req, reason)
        self._dispatch()

    def _name_blocks(self, req: Request) -> None:
        """Content-address the prompt's full blocks: by the engine's token ids when it has
        them (the runtime), else by the content the workload gave (``req.content``)."""
        if req.content is None and req.prompt_ids is not None:
            req.content, req.tokens_per_id = tuple(req.prompt_ids), 1
        attach_hashes(req, self.kv.block_size)

    def rejection(self, prompt_tokens: int, output_tokens: int) -> str | None:
        """Why a request of this size can never run here, or None when it can."""
        return rejection_reason(
            prompt_tokens, output_tokens, self.kv.capacity_tokens, self.max_model_len
        )

    def fits(self, prompt_tokens: int, output_tokens: int) -> bool:
        return self.rejection(prompt_tokens, output_tokens) is None

    def _reject(self, req: Request, reason: str) -> None:
        reject(req, reason)
        self.stats.rejected += 1
        self._request_done(req)

    def abort(self, request_id: int) -> None:
        """Drop a request (its client went away); its KV is freed now or when its batch ends."""
        req = self._by_id.get(request_id)
        if req is None or req.status in DONE:
            return
        self._aborting.add(req.id)
        if req.in_flight or self._in_unflagged_run(req):
            return  # dropped when its batch completes
        if req in self.waiting:
            self.waiting.remove(req)
        self._finish(req, self.now())
        self._dispatch()

    def _in_unflagged_run(self, req: Request) -> bool:
        """Whether ``req`` decodes in the aggregated lane's run without its flag set."""
        if self.flags_aggregated_runs:
            return False
        run = self.in_flight.get(Lane.MIXED)
        return run is not None and any(r is req for r in run.batch.decode)

    # ----------------------------------------------------------------- asking the policy
    def view(self, lane: Lane | None = None) -> EngineView:
        """What the policy sees; ``lane`` is the lane it is asked to fill (None: the split)."""
        return EngineView(
            now=self.now(),
            waiting=self.waiting,
            running=self.running,
            kv=self.kv,
            partition=self.partition,
            in_flight={lane: run.batch for lane, run in self.in_flight.items()},
            slo=self.slo,
            model=self.model,
            gpu=self.gpu,
            arrived=self._arrived,
            decode_steps=self.decode_steps,
        )

    def _dispatch(self) -> None:
        """Offer every free lane to the policy; re-entrant calls are folded into one more pass."""
        if self._dispatching:
            self._again = True
            return
        self._dispatching = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._dispatch_once()
        finally:
            self._dispatching = False

    def _dispatch_once(self) -> None:
        in_flight = self.in_flight
        if in_flight:  # every lane of the partition busy: nothing to offer
            if self.partition.is_split:
                if Lane.PREFILL in in_flight and Lane.DECODE in in_flight:
                    return
            elif Lane.MIXED in in_flight:
                return
        asked = self.view()
        part = self.policy.partition(asked)
        # Most policies hand back the partition in force: the same object, no fields compared.
        kept = part is self.partition
        if not kept and part != self.partition:
            self._check_partition(part)
            if part.is_split != self.partition.is_split and self.in_flight:
                return  # a mode switch waits for the running batches to drain
            self.partition = part
            self.stats.partition_changes += 1
            self._sample()
        # The policy keeps the partition of this state.
        settled = (kept and asked.partition is part) or part == asked.partition
        plain = type(self).view is SchedulingCore.view
        first = True
        for lane in self.partition.lanes:
            if lane in self.in_flight:
                continue
            # Only the first lane asked sees the state the partition was chosen for: nothing
            # has changed since, so a core's own views differ at most in the clock's reading.
            # When the clock reads the same, that view is the one already asked (with the
            # partition now in force), not a copy of it.
            if first and plain and self.now() == asked.now:
                view = asked
                view.partition = self.partition
                view.partition_settled = settled
            else:
                view = self.view(lane)
                if first and settled:
                    view.partition_settled = False if plain else same_state(view, asked)
            first = False
            batch = self.policy.next_batch(view, lane)
            if batch is not None:
                self._launch(lane, batch)

    def _check_partition(self, part) -> None:
        if not self.gpu.is_valid(part):
            raise SchedulingError(
                f"policy {self.policy.name!r} chose {part}, not a valid partition of "
                f"{self.gpu.name} ({self.gpu.num_sms} SMs, in steps of {self.gpu.sm_granularity})"
            )

    # ----------------------------------------------------------------- launching
    def _launch(self, lane: Lane, batch: Batch) -> None:
        now = self.now()
        for victim in batch.preempt:
            self._preempt(victim)
        if batch.is_empty:
            self._again = True
            return
        kv = self._kv_for(lane)
        for chunk in batch.prefill:
            req = chunk.request
            if req.status is Status.WAITING:
                self.waiting.remove(req)
                self.running.append(req)
                req.status = Status.RUNNING
                if math.isnan(req.scheduled_s):
                    req.scheduled_s = now
                    self._scheduled(req)
                # Its cached prefix, if the policy found one: taken before any chunk below
                # allocates, so no allocation evicts a block the plan is reusing.
                kv.admit(req, chunk.start)
        for chunk in batch.prefill:
            req = chunk.request
            kv.grow(req.id, chunk.start + chunk.length)
            kv.commit(req, chunk.start + chunk.length)
            req.in_flight = True
        shape = batch.shape()
        co = self._co_runner(lane)
        sms = self.partition.sms_beside(lane, co.sms if co else 0, self.gpu.num_sms)
        run = self._plan(lane, batch, shape, sms, co, now)
        steps = run.steps
        if run.phase is None:
            kv.grow_decodes(batch.decode, steps)
        else:
            self._grow_phase(kv, batch, run.phase, steps)
        if self.partition.is_split or self.flags_aggregated_runs:
            for req in batch.decode:
                req.in_flight = True
        self.in_flight[lane] = run
        if self.record_decisions:
            self._record_decisions(lane, batch, run)
        try:
            self._execute(run, kv)
        except Exception:
            del self.in_flight[lane]  # it never started: its requests belong to no running batch
            raise

    def _grow_phase(self, kv: KVCache, batch: Batch, phase: DecodePhase, steps: int) -> None:
        """KV for a run with a decode phase: each request to the tokens it will hold when it
        finishes or the run ends (the prompts prefilled in its first step from then on)."""
        if phase.whole:
            full = batch.decode
        else:
            full = [r for r in batch.decode if r.output_tokens - r.generated >= steps]
        kv.grow_decodes(full, steps)
        if len(full) < len(batch.decode):
            for r in batch.decode:
                if r.output_tokens - r.generated < steps:
                    kv.grow(r.id, r.kv_tokens + r.output_tokens - r.generated)
        if phase.offset:
            for chunk in batch.prefill:
                req = chunk.request
                # One token comes with the prefill; the rest from the decode steps after it.
                left = max(0, req.output_tokens - req.generated - 1)
                kv.grow(req.id, chunk.start + chunk.length + min(left, steps - 1))

    def _record_decisions(self, lane: Lane, batch: Batch, run: Run) -> None:
        split = str(self.partition)
        phase = run.phase
        if phase is None:
            self.decisions.append((lane.value, split, batch.describe(), run.steps))
            return
        if phase.offset:
            self.decisions.append((lane.value, split, batch.describe(), 1))
        for decode, k in phase.batches():
            self.decisions.append((lane.value, split, Batch(decode=decode).describe(), k))

    def _preempt(self, req: Request) -> None:
        if req.in_flight:
            raise SchedulingError(
                f"policy {self.policy.name!r} preempted request {req.id} while another lane runs it"
            )
        self.kv.keep_for_recompute(req)  # its blocks stay cached, to be found on recompute
        self._free_kv(req)
        if req.status is Status.RUNNING:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.reset_for_recompute()
        self.waiting.insert(0, req)
        self.stats.preemptions += 1

    def _co_runner(self, lane: Lane) -> Run | None:
        """The batch running beside ``lane`` on the other lane, sharing its HBM."""
        for other, run in self.in_flight.items():
            if other is not lane:
                return run
        return None

    def _kv_for(self, lane: Lane) -> KVCache:
        """The KV cache a lane's batches allocate from (one GPU: the same for both lanes)."""
        return self.kv

    def _free_kv(self, req: Request) -> None:
        self.kv.free(req.id)

    # ----------------------------------------------------------------- completing
    def _apply(
        self, run: Run, now: float, step_ends: Sequence[float], tokens: Iterator[int] | None = None
    ) -> None:
        """``run`` ended at ``now`` (its iterations at ``step_ends``): apply its tokens, finish
        and drop requests, record it. ``tokens`` are the sampled ids, when there are any."""
        del self.in_flight[run.lane]
        batch = run.batch
        emit = None if tokens is None else self._emit
        keep = self.keep_token_times
        finished: list[Request] = []
        prefilled: list[Request] = []
        first_tokens: list[int] = []
        k = run.steps
        phase = run.phase
        first_end = float(step_ends[0]) if phase is not None and phase.offset else now
        finish_at: dict[int, float] = {}  # requests finishing before the run's end
        for chunk in batch.prefill:
            req = chunk.request
            req.in_flight = False
            req.kv_tokens = chunk.start + chunk.length
            if req.kv_tokens >= req.prefill_target:
                if req.generated == 0:
                    req.first_token_s = first_end
                req.generated += 1
                first_tokens.append(req.id)
                if keep:
                    req.token_times.append(first_end)
                if emit is not None:
                    emit(req, next(tokens))
                if req.generated >= req.output_tokens:
                    finished.append(req)
                    if first_end != now:
                        finish_at[req.id] = first_end
                else:
                    prefilled.append(req)
        decode = batch.decode
        if phase is not None:
            self.decode_steps += k if decode else k - phase.offset
            if emit is None and not keep:  # nothing per token: each request in one pass
                if self.flags_aggregated_runs:  # (the prompts' flags were cleared above)
                    for req in decode:
                        req.in_flight = False
                _advance(decode, k, 0, step_ends, finished, finish_at)
                if phase.offset:
                    _advance(prefilled, k - 1, 1, step_ends, finished, finish_at)
            else:
                whole = phase.whole
                groups = [(0, k, decode)] if whole else _by_tokens(decode, k, 0)
                if phase.offset:
                    groups += [(1, k - 1, prefilled)] if whole else _by_tokens(prefilled, k - 1, 1)
                for start, n, reqs in groups:
                    self._apply_steps(reqs, n, step_ends[start : start + n], finished, finish_at,
                                      emit, tokens, log=False)  # fmt: skip
            if not phase.offset:
                self.tokens.add(first_tokens, first_end)
            self._log_phase(phase, step_ends)
        elif k == 1:  # the prompts' first tokens and the decodes' come at the same time
            if decode:
                self.decode_steps += 1
            self.tokens.add(first_tokens + [req.id for req in decode], now)
            self._apply_steps(decode, 1, (now,), finished, None, emit, tokens, log=False)
        else:
            self.tokens.add(first_tokens, now)
            self.decode_steps += k
            self._apply_steps(decode, k, step_ends, finished, None, emit, tokens)
        if self._aborting:
            # A run passes no abort but in its last step: requests that finished before it
            # were gone when their clients left.
            for rid in finish_at:
                self._aborting.discard(rid)
            ran = [c.request for c in batch.prefill] + batch.decode
            finished += [r for r in ran if r.id in self._aborting and r not in finished]
            prefilled = [r for r in prefilled if r.id not in self._aborting]
        for req in finished:
            self._finish(req, finish_at.get(req.id, now) if finish_at else now)
        for req in prefilled:
            self._prefill_done(req)
        self._record(run, step_ends)
        self._sample()

    def _apply_steps(
        self,
        reqs: list[Request],
        steps: int,
        ends: Sequence[float],
        finished: list[Request],
        finish_at: dict[int, float] | None,
        emit,
        tokens: Iterator[int] | None,
        log: bool = True,
    ) -> None:
        """``reqs`` each decoded ``steps`` tokens, ending at ``ends`` (logged unless the
        caller logs them)."""
        if not reqs or not steps:
            return
        # Requests keep their token times as floats or arrays: a short run's plain-float
        # ends become one array, shared by all of them.
        if steps == 1:
            times = float(ends[0])
        else:
            times = np.array(ends) if isinstance(ends, list) else ends
        if log:
            self.tokens.add([req.id for req in reqs], times)
        done: list[Request] = []
        keep = self.keep_token_times
        if not keep and emit is None:  # nothing per token: the plain loop of a simulation
            if self.flags_aggregated_runs or self.partition.is_split:
                for req in reqs:
                    req.in_flight = False
            for req in reqs:
                req.kv_tokens += steps
                generated = req.generated + steps
                req.generated = generated
                if generated >= req.output_tokens:
                    done.append(req)
        else:
            for req in reqs:
                req.in_flight = False
                req.kv_tokens += steps
                req.generated += steps
                if keep:
                    req.token_times.append(times)
                if emit is not None:
                    emit(req, next(tokens))
                if req.generated >= req.output_tokens:
                    done.append(req)
        if done:
            finished += done
            if finish_at is not None:
                last = float(ends[-1])
                for req in done:
                    finish_at[req.id] = last

    def _log_phase(self, phase: DecodePhase, step_ends: Sequence[float]) -> None:
        """Log a run's decode tokens as the runs it stands for would be: each segment's step
        ends once, with the requests decoding in it. After a prefill step, every member got
        a token at its end: the decodes their next, the prompts their first."""
        if phase.by_finish is None:
            ids = [req.id for req in phase.members]
            counts = [len(ids)] * len(phase.segments)
        else:
            members = phase.members
            ids = [members[i].id for i in phase.by_finish]
            counts = phase.counts
        i = phase.offset
        if i:
            self.tokens.add(ids, float(step_ends[0]))
        for (_, k), n in zip(phase.segments, counts, strict=True):
            self.tokens.add(ids[:n], step_ends[i : i + k] if k > 1 else float(step_ends[i]))
            i += k

    def _finish(self, req: Request, now: float) -> None:
        req.finish_s = now
        was_running = req.status is Status.RUNNING
        if req.id in self._aborting:
            self._aborting.discard(req.id)
            req.status = Status.ABORTED
            self.stats.aborted += 1
        else:
            req.status = Status.FINISHED
            self.stats.finished += 1
            self.stats.prompt_tokens += req.prompt_tokens
        self._free_kv(req)
        if was_running:
            self.running.remove(req)
        self._request_done(req)

    def _scheduled(self, req: Request) -> None:
        """``req`` got its first batch."""

    def _emit(self, req: Request, token: int) -> None:
        """``req`` produced ``token`` (engines that sample real tokens stream it here)."""

    def _request_done(self, req: Request) -> None:
        """``req`` left the engine: finished, aborted or rejected (its ``status`` says which)."""

    def _prefill_done(self, req: Request) -> None:
        """``req`` finished its prefill and goes on decoding (a hook for two-GPU engines)."""

    # ----------------------------------------------------------------- recording
    def _record(self, run: Run, step_ends: Sequence[float]) -> None:
        self._iters.add(run, step_ends)
        self.stats.iterations += 1 if run.phase is None else run.phase.runs

    def _sample(self) -> None:
        p = self.partition
        self._timeline.add(
            self.now(), len(self.waiting), len(self.running), self.kv.usage,
            p.mixed_sms, p.prefill_sms, p.decode_sms,
        )  # fmt: skip

    def iteration_table(self) -> dict[str, np.ndarray]:
        return self._iters.table()

    def timeline_table(self) -> dict[str, np.ndarray]:
        return self._timeline.table()

    # ----------------------------------------------------------------- state
    @property
    def idle(self) -> bool:
        return not self.in_flight and not self.waiting and not self.running

    def unfinished(self) -> list[Request]:
        return [r for r in self.requests if r.status not in DONE]

    def check_all_done(self) -> None:
        """Raise if the run ended with requests the policy never finished."""
        left = self.unfinished()
        if left:
            raise SchedulingError(
                f"policy {self.policy.name!r} stopped scheduling with {len(left)} requests "
                f"unfinished (first: request {left[0].id}, {left[0].status}); it returned no "
                "batch while work was waiting"
            )
