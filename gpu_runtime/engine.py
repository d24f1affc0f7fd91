"""The real engine's loop: the simulator's, step for step, with a forward pass in each batch.

Whenever a lane becomes free the engine asks the policy for the partition and then for a batch
for each free lane (``_dispatch_once``, as in ``twin.sim``), applies the batch's preemptions,
commits its KV through ``policies.KVCache``, launches it, and applies the sampled tokens when
it completes. ``Batch.steady_steps`` is taken only as a promise: the engine asks the policy
again before every iteration and never fast-forwards.

The engine is single-threaded: a driver (``gpu_runtime.loop``: ``EngineLoop`` on the wall
clock, ``run_virtual`` on the virtual clock) calls ``arrive``, ``abort`` and ``complete``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from gpu_runtime.clock import VirtualClock, WallClock
from gpu_runtime.executor import Executor, Pending
from gpu_runtime.jobs import Job
from policies import (
    Batch,
    BatchShape,
    EngineView,
    KVCache,
    Lane,
    Partition,
    Policy,
    Request,
    Slo,
    Status,
)
from policies.admission import reject, rejection_reason
from policies.view import LatencyModel


class EngineError(RuntimeError):
    """The policy asked for something a correct policy never does."""


@dataclass
class Run:
    lane: Lane
    batch: Batch
    shape: BatchShape
    sms: int
    start: float
    predicted: float
    pending: Pending
    co_label: str = ""


@dataclass
class EngineStats:
    """Counters a server exposes; updated on the engine thread, read anywhere."""

    finished: int = 0
    aborted: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    iterations: int = 0
    preemptions: int = 0
    partition_changes: int = 0
    by_lane: dict[str, int] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        policy: Policy,
        executor: Executor,
        model: LatencyModel,
        kv: KVCache,
        slo: Slo = Slo(),
        clock: WallClock | VirtualClock | None = None,
        max_model_len: int | None = None,
        record_decisions: bool = False,
    ) -> None:
        self.policy = policy
        self.executor = executor
        self.model = model
        self.gpu = model.gpu
        self.kv = kv
        self.slo = slo
        self.clock = clock or WallClock()
        self.max_model_len = max_model_len
        self.record_decisions = record_decisions
        self.partition = self.gpu.aggregated()
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.in_flight: dict[Lane, Run] = {}
        self.jobs: dict[int, Job] = {}
        self.requests: list[Request] = []
        self.decisions: list[tuple] = []
        self.iterations: list[tuple] = []
        self.timeline: list[tuple] = []
        self.stats = EngineStats()
        self._arrived = 0
        self._dispatching = False
        self._again = False

    # ----------------------------------------------------------------- requests
    def fits(self, prompt_tokens: int, output_tokens: int) -> bool:
        """Whether a request can ever run: the simulator's KV rule plus the model's length."""
        return self.rejection(prompt_tokens, output_tokens) is None

    def rejection(self, prompt_tokens: int, output_tokens: int) -> str | None:
        return rejection_reason(
            prompt_tokens, output_tokens, self.kv.capacity_tokens, self.max_model_len
        )

    def arrive(self, jobs: Iterable[Job]) -> None:
        """Requests arriving now, in arrival order."""
        for job in jobs:
            req = job.request
            if req.id in self.jobs:
                raise EngineError(f"request id {req.id} is already in the engine")
            self.jobs[req.id] = job
            self.requests.append(req)
            self._arrived += 1
            reason = self.rejection(req.prompt_tokens, req.output_tokens)
            if reason:
                reject(req, reason)
                job.finish_reason = "rejected"
                self.stats.rejected += 1
                self._notify_finished(job)
            else:
                self.waiting.append(req)
        self._dispatch()

    def abort(self, request_id: int) -> None:
        """Drop a request (its client went away); its KV is freed now or when its batch ends."""
        job = self.jobs.get(request_id)
        if job is None or job.request.status in (Status.FINISHED, Status.ABORTED):
            return
        req = job.request
        job.aborted = True
        if req.status is Status.REJECTED or req.in_flight:
            return  # an in-flight request is dropped when its batch completes
        if req in self.waiting:
            self.waiting.remove(req)
        self._finish(req, self.clock.now())
        self._dispatch()

    # ----------------------------------------------------------------- policy
    def view(self) -> EngineView:
        return EngineView(
            now=self.clock.now(),
            waiting=self.waiting,
            running=self.running,
            kv=self.kv,
            partition=self.partition,
            in_flight={lane: run.batch for lane, run in self.in_flight.items()},
            slo=self.slo,
            model=self.model,
            gpu=self.gpu,
            arrived=self._arrived,
        )

    def _dispatch(self) -> None:
        """Offer every free lane to the policy; re-entrant calls fold into one more pass."""
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
        if all(lane in self.in_flight for lane in self.partition.lanes):
            return
        part = self.policy.partition(self.view())
        if part != self.partition:
            if not self.gpu.is_valid(part):
                raise EngineError(
                    f"policy {self.policy.name!r} chose {part}, not a valid partition of "
                    f"{self.gpu.name} ({self.gpu.num_sms} SMs, "
                    f"in steps of {self.gpu.sm_granularity})"
                )
            if part.is_split != self.partition.is_split and self.in_flight:
                return  # a mode switch waits for the running batches to drain
            self.partition = part
            self.stats.partition_changes += 1
            self._sample()
        for lane in self.partition.lanes:
            if lane in self.in_flight:
                continue
            batch = self.policy.next_batch(self.view(), lane)
            if batch is not None:
                self._launch(lane, batch)

    # ----------------------------------------------------------------- launching
    def _launch(self, lane: Lane, batch: Batch) -> None:
        now = self.clock.now()
        for victim in batch.preempt:
            self._preempt(victim)
        if batch.is_empty:
            self._again = True
            return
        kv = self.kv
        for chunk in batch.prefill:
            req = chunk.request
            if req.status is Status.WAITING:
                self.waiting.remove(req)
                self.running.append(req)
                req.status = Status.RUNNING
                if math.isnan(req.scheduled_s):
                    req.scheduled_s = now
                    self._notify_started(self.jobs[req.id])
            kv.grow(req.id, chunk.start + chunk.length)
            req.in_flight = True
        for req in batch.decode:
            kv.grow(req.id, req.kv_tokens + 1)
            req.in_flight = True
        shape = batch.shape()
        co = self._co_runner(lane)
        co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
        sms = self.partition.sms_beside(lane, co_sms, self.gpu.num_sms)
        partition = self.partition
        if sms != partition.sms(lane):
            rest = self.gpu.num_sms - sms
            partition = (
                Partition.split(sms, rest) if lane is Lane.PREFILL else Partition.split(rest, sms)
            )
        predicted = self.model.predict(shape, sms, co_shape, co_sms)
        pending = self.executor.launch(lane, partition, batch, kv, self._job_of)
        run = Run(lane, batch, shape, sms, now, predicted, pending, _label(co))
        self.in_flight[lane] = run
        if co is not None:
            co.co_label = _label(run)
        if self.record_decisions:
            self.decisions.append((lane.value, str(self.partition), batch.describe(), 1))
        self.clock.started(lane, shape, sms)

    def _preempt(self, req: Request) -> None:
        if req.in_flight:
            raise EngineError(
                f"policy {self.policy.name!r} preempted request {req.id} while another lane runs it"
            )
        self.kv.free(req.id)
        if req.status is Status.RUNNING:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.reset_for_recompute()
        self.waiting.insert(0, req)
        self.stats.preemptions += 1

    def _job_of(self, req: Request) -> Job:
        return self.jobs[req.id]

    def _co_runner(self, lane: Lane) -> Run | None:
        for other, run in self.in_flight.items():
            if other is not lane:
                return run
        return None

    # ----------------------------------------------------------------- completing
    def ready_lanes(self) -> list[Lane]:
        """Lanes whose batch has finished on the device, oldest launch first."""
        runs = sorted(self.in_flight.values(), key=lambda r: r.start)
        return [run.lane for run in runs if run.pending.ready()]

    def complete(self, lane: Lane) -> None:
        """Apply the finished batch on ``lane``: tokens, finishes, KV; then dispatch again."""
        now = self.clock.now()
        run = self.in_flight.pop(lane)
        batch = run.batch
        tokens = iter(run.pending.tokens())
        finished: list[Request] = []
        for chunk in batch.prefill:
            req = chunk.request
            req.in_flight = False
            req.kv_tokens = chunk.start + chunk.length
            if req.kv_tokens >= req.prefill_target:
                if req.generated == 0:
                    req.first_token_s = now
                req.generated += 1
                req.token_times.append(now)
                self._emit(req, next(tokens))
                if req.generated >= req.output_tokens:
                    finished.append(req)
        for req in batch.decode:
            req.in_flight = False
            req.kv_tokens += 1
            req.generated += 1
            req.token_times.append(now)
            self._emit(req, next(tokens))
            if req.generated >= req.output_tokens:
                finished.append(req)
        for req in (c.request for c in batch.prefill):
            if self.jobs[req.id].aborted and req not in finished:
                finished.append(req)
        for req in batch.decode:
            if self.jobs[req.id].aborted and req not in finished:
                finished.append(req)
        for req in finished:
            self._finish(req, now)
        self._record(run, now)
        self._sample()
        self.clock.finished(lane)
        self._dispatch()

    def _emit(self, req: Request, token: int) -> None:
        job = self.jobs[req.id]
        job.ids.append(token)
        self.stats.generated_tokens += 1
        if job.listener is not None and not job.aborted:
            job.listener.tokens(job, [token])
        if not job.ignore_eos and token in job.eos_ids and req.generated < req.output_tokens:
            req.output_tokens = req.generated  # a stop token ends the request early
            job.finish_reason = "stop"

    def _finish(self, req: Request, now: float) -> None:
        job = self.jobs[req.id]
        req.finish_s = now
        if job.aborted:
            req.status = Status.ABORTED
            job.finish_reason = "abort"
            self.stats.aborted += 1
        else:
            req.status = Status.FINISHED
            job.finish_reason = job.finish_reason or "length"
            self.stats.finished += 1
            self.stats.prompt_tokens += req.prompt_tokens
        self.kv.free(req.id)
        if req in self.running:
            self.running.remove(req)
        self._notify_finished(job)

    def _notify_started(self, job: Job) -> None:
        if job.listener is not None:
            job.listener.started(job)

    def _notify_finished(self, job: Job) -> None:
        if job.listener is not None:
            job.listener.finished(job)

    # ----------------------------------------------------------------- recording
    def _record(self, run: Run, end: float) -> None:
        s = run.shape
        ctx = s.decode_ctx_sum + sum(s.prefill_q) + sum(s.prefill_ctx)
        row = (run.lane.value, run.start, end, run.sms, s.prefill_tokens, len(s.prefill_q))
        self.iterations.append(
            (*row, s.n_decode, ctx, sum(s.prefill_ctx), run.predicted, run.co_label)
        )
        self.stats.iterations += 1
        self.stats.by_lane[run.lane.value] = self.stats.by_lane.get(run.lane.value, 0) + 1

    def _sample(self) -> None:
        p = self.partition
        state = (self.clock.now(), len(self.waiting), len(self.running), self.kv.usage)
        self.timeline.append((*state, p.mixed_sms, p.prefill_sms, p.decode_sms))

    @property
    def idle(self) -> bool:
        return not self.in_flight and not self.waiting and not self.running

    def unfinished(self) -> list[Request]:
        done = (Status.FINISHED, Status.REJECTED, Status.ABORTED)
        return [r for r in self.requests if r.status not in done]


def _label(run: Run | None) -> str:
    if run is None:
        return ""
    s = run.shape
    return f"{run.lane.value}:{run.sms}sm:{s.prefill_tokens}p+{s.n_decode}d"
