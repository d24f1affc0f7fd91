"""The real engine: the scheduling core (``twin.core``) executed on the device.

The core decides everything a policy's decision implies (queues, KV commits, preemption,
finishes, aborts, records), exactly as in the simulator. This executor adds the forward pass:
each batch the core launches goes to the device executor on its lane, and its sampled tokens
are streamed to the request's job when it completes. ``Batch.steady_steps`` is taken only as
a promise: the engine asks the policy again before every iteration and never fast-forwards.

The engine is single-threaded: a driver (``gpu_runtime.loop``: ``EngineLoop`` on the wall
clock, ``run_virtual`` on the virtual clock) calls ``arrive``, ``abort`` and ``complete``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from gpu_runtime.clock import VirtualClock, WallClock
from gpu_runtime.executor import Executor, Pending
from gpu_runtime.jobs import Job
from policies import Batch, BatchShape, KVCache, Lane, Partition, Policy, Request, Slo, Status
from policies.view import LatencyModel
from twin.core import EngineStats, Run, SchedulingCore, run_label
from twin.errors import SchedulingError

EngineError = SchedulingError  # the policy asked for something a correct policy never does
__all__ = ["DeviceRun", "Engine", "EngineError", "EngineStats"]


@dataclass(slots=True)
class DeviceRun(Run):
    pending: Pending | None = None  # the device's result, polled until ready


class Engine(SchedulingCore):
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
        super().__init__(policy, model, kv, slo, max_model_len, record_decisions)
        self.executor = executor
        self.clock = clock or WallClock()
        self.jobs: dict[int, Job] = {}

    def now(self) -> float:
        return self.clock.now()

    # ----------------------------------------------------------------- requests
    def arrive(self, jobs: Iterable[Job]) -> None:
        """Jobs arriving now, in arrival order; their requests enter the core."""
        super().arrive(self._register(job) for job in jobs)

    def _register(self, job: Job) -> Request:
        self.jobs.setdefault(job.request.id, job)  # a repeated id is the core's error
        return job.request

    def abort(self, request_id: int) -> None:
        job = self.jobs.get(request_id)
        if job is not None and job.request.status not in (Status.FINISHED, Status.ABORTED):
            job.aborted = True  # nothing more is streamed to it
        super().abort(request_id)

    # ----------------------------------------------------------------- executing
    def _plan(
        self, lane: Lane, batch: Batch, shape: BatchShape, sms: int, co: Run | None, now: float
    ) -> DeviceRun:
        co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
        predicted = self.model.predict(shape, sms, co_shape, co_sms)
        return DeviceRun(lane, batch, shape, sms, 1, now, np.array([predicted]), run_label(co))

    def _execute(self, run: DeviceRun, kv: KVCache) -> None:
        lane, sms = run.lane, run.sms
        partition = self.partition
        if sms != partition.sms(lane):  # the other lane still holds SMs of an older split
            rest = self.gpu.num_sms - sms
            partition = (
                Partition.split(sms, rest) if lane is Lane.PREFILL else Partition.split(rest, sms)
            )
        run.pending = self.executor.launch(lane, partition, run.batch, kv, self._job_of)
        co = self._co_runner(lane)
        if co is not None:
            co.co_label = run_label(run)
        self.clock.started(lane, run.shape, sms)

    def _job_of(self, req: Request) -> Job:
        return self.jobs[req.id]

    def ready_lanes(self) -> list[Lane]:
        """Lanes whose batch has finished on the device, oldest launch first."""
        runs = sorted(self.in_flight.values(), key=lambda r: r.start)
        return [run.lane for run in runs if run.pending.ready()]

    def complete(self, lane: Lane) -> None:
        """Apply the finished batch on ``lane``: tokens, finishes, KV; then dispatch again."""
        now = self.clock.now()
        run = self.in_flight[lane]
        self._apply(run, now, np.array([now]), iter(run.pending.tokens()))
        self.clock.finished(lane)
        self._dispatch()

    # ----------------------------------------------------------------- streaming
    def _scheduled(self, req: Request) -> None:
        job = self.jobs[req.id]
        if job.listener is not None:
            job.listener.started(job)

    def _emit(self, req: Request, token: int) -> None:
        job = self.jobs[req.id]
        job.ids.append(token)
        self.stats.generated_tokens += 1
        if job.listener is not None and not job.aborted:
            job.listener.tokens(job, [token])
        if not job.ignore_eos and token in job.eos_ids and req.generated < req.output_tokens:
            req.output_tokens = req.generated  # a stop token ends the request early
            job.finish_reason = "stop"

    def _request_done(self, req: Request) -> None:
        job = self.jobs[req.id]
        if req.status is Status.REJECTED:
            job.finish_reason = "rejected"
        elif req.status is Status.ABORTED:
            job.finish_reason = "abort"
        else:
            job.finish_reason = job.finish_reason or "length"
        if job.listener is not None:
            job.listener.finished(job)
