"""The SimPy engine: lanes ask the policy for batches and hold for the latency model's time.

An arrival process feeds the queue; each running batch ends with an event at its predicted
time, after which its lane asks the policy again. In split mode the two lanes
share HBM: whenever either lane starts or finishes a batch, the other's remaining time is
re-rated with its new co-runner (a fluid model), not frozen at launch. Decode-only batches the
policy marks steady are advanced several iterations per event, bounded by the next arrival,
the next finish, the KV cache and the other lane, so the result equals stepping one
iteration at a time.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import simpy

from policies import (
    Batch,
    BatchShape,
    EngineView,
    KVCache,
    Lane,
    Policy,
    Request,
    Slo,
    Status,
)
from policies.block_hash import MOONCAKE_BLOCK_TOKENS, attach_hashes
from policies.prefix_cache import make_kv_cache
from profiler.model import LatencyModel
from traces import Workload
from twin.errors import SimulationError
from twin.metrics import ITERATION_COLUMNS, TIMELINE_COLUMNS


@dataclass(frozen=True)
class EngineConfig:
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes: int = 4 * 10**9
    block_size: int = 16
    fast_forward: bool = True
    max_steps_per_event: int = 1 << 16
    num_kv_blocks: int | None = None  # overrides the count derived from GPU memory

    def kv_blocks(self, model: LatencyModel) -> int:
        if self.num_kv_blocks is not None:
            return self.num_kv_blocks
        cfg = model.config
        budget = model.gpu.memory_bytes * self.gpu_memory_utilization
        free = budget - cfg.weight_bytes - self.activation_reserve_bytes
        blocks = int(free // (cfg.kv_bytes_per_token * self.block_size))
        if blocks <= 0:
            raise SimulationError(
                f"{cfg.name} ({cfg.weight_bytes / 1e9:.1f} GB of weights) leaves no KV cache on "
                f"{model.gpu.name}; raise gpu_memory_utilization or pick a smaller model"
            )
        return blocks


@dataclass(slots=True)
class Run:
    """A batch executing on a lane, possibly several identical decode iterations."""

    lane: Lane
    batch: Batch
    shape: BatchShape
    sms: int
    steps: int
    start: float
    predicted: np.ndarray  # each iteration's predicted seconds at launch (with the co-runner then)
    step_fraction: np.ndarray  # cumulative share of the run's work done after each step
    duration: float = 0.0  # total duration under the current co-runner
    remaining: float = 1.0  # fraction of the work left at ``last``
    last: float = 0.0
    end: float = 0.0
    breaks: list = field(default_factory=list)  # (time, fraction done) where the rate changed
    version: int = 0  # bumped on every re-rate; an end event of an older version is stale
    co_label: str = ""


@dataclass
class SimResult:
    requests: list[Request]
    iterations: dict[str, np.ndarray]
    timeline: dict[str, np.ndarray]
    decisions: list[tuple]
    partition_changes: int
    end_s: float


class Simulator:
    """One GPU. ``make_simulator`` picks the two-GPU engine for policies that need it."""

    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        model: LatencyModel,
        slo: Slo = Slo(),
        config: EngineConfig = EngineConfig(),
        progress: Callable[[int, int], None] | None = None,
        record_decisions: bool = False,
    ) -> None:
        self.workload = workload
        self.policy = policy
        self.model = model
        self.slo = slo
        self.config = config
        self.gpu = model.gpu
        self.progress = progress
        self.record_decisions = record_decisions
        self.env = simpy.Environment()
        self.kv = make_kv_cache(policy, config.kv_blocks(model), config.block_size)
        self.requests = [
            Request(i, float(t), int(p), int(o))
            for i, (t, p, o) in enumerate(
                zip(workload.arrival_s, workload.prompt_tokens, workload.output_tokens, strict=True)
            )
        ]
        if self.kv.prefix_caching and workload.prefix_hashes is not None:
            for req, ids in zip(self.requests, workload.prefix_hashes, strict=True):
                req.content, req.tokens_per_id = ids, MOONCAKE_BLOCK_TOKENS
                attach_hashes(req, config.block_size)
        self.decode_steps = 0
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.partition = self.gpu.aggregated()
        self.in_flight: dict[Lane, Run] = {}
        self._arrived = 0
        self._dispatching = False
        self._again = False
        self._iters: list[tuple] = []
        self._timeline: list[tuple] = []
        self.decisions: list[tuple] = []
        self.partition_changes = 0

    # ----------------------------------------------------------------- driving
    def run(self) -> SimResult:
        self.env.process(self._arrivals())
        with _fewer_collections():
            self.env.run()
        left = [r for r in self.requests if r.status not in (Status.FINISHED, Status.REJECTED)]
        if left:
            raise SimulationError(
                f"policy {self.policy.name!r} stopped scheduling with {len(left)} requests "
                f"unfinished (first: request {left[0].id}, {left[0].status}); it returned no "
                "batch while work was waiting"
            )
        return SimResult(
            requests=self.requests,
            iterations=self._iteration_table(),
            timeline=self._timeline_table(),
            decisions=self.decisions,
            partition_changes=self.partition_changes,
            end_s=self.env.now,
        )

    def _arrivals(self):
        arrivals = self.workload.arrival_s
        n = len(arrivals)
        max_tokens = self.kv.capacity_tokens
        i = 0
        while i < n:
            t = float(arrivals[i])
            if t > self.env.now:
                yield self.env.timeout(t - self.env.now)
            while i < n and arrivals[i] <= self.env.now:
                req = self.requests[i]
                if req.prompt_tokens + req.output_tokens - 1 > max_tokens:
                    req.status = Status.REJECTED
                else:
                    self.waiting.append(req)
                i += 1
            self._arrived = i
            if self.progress is not None:
                self.progress(i, n)
            self._dispatch()

    def _next_arrival(self) -> float:
        if self._arrived < len(self.requests):
            return float(self.workload.arrival_s[self._arrived])
        return math.inf

    def _view(self, lane: Lane | None = None) -> EngineView:
        """What the policy sees; ``lane`` is the lane it is asked to fill (None: the split)."""
        return EngineView(
            now=self.env.now,
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
        if all(lane in self.in_flight for lane in self.partition.lanes):
            return
        part = self.policy.partition(self._view())
        if part != self.partition:
            self._check_partition(part)
            if part.is_split != self.partition.is_split and self.in_flight:
                return  # a mode switch waits for the running batches to drain
            self.partition = part
            self.partition_changes += 1
            self._sample()
        for lane in self.partition.lanes:
            if lane in self.in_flight:
                continue
            batch = self.policy.next_batch(self._view(lane), lane)
            if batch is not None:
                self._launch(lane, batch)

    def _check_partition(self, part) -> None:
        if not self.gpu.is_valid(part):
            raise SimulationError(
                f"policy {self.policy.name!r} chose {part}, not a valid partition of "
                f"{self.gpu.name} ({self.gpu.num_sms} SMs, in steps of {self.gpu.sm_granularity})"
            )

    def _kv_for(self, lane: Lane) -> KVCache:
        """The KV cache a lane's batches allocate from (one GPU: the same for both lanes)."""
        return self.kv

    def _free_kv(self, req: Request) -> None:
        self.kv.free(req.id)

    def _prefill_done(self, req: Request) -> None:
        """A request finished its prefill and goes on decoding (a hook for two-GPU engines)."""

    # ----------------------------------------------------------------- launching
    def _launch(self, lane: Lane, batch: Batch) -> None:
        now = self.env.now
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
                kv.admit(req, chunk.start)
            kv.grow(req.id, chunk.start + chunk.length)
            kv.commit(req, chunk.start + chunk.length)
            req.in_flight = True
        shape = batch.shape()
        co = self._co_runner(lane)
        sms = self.partition.sms_beside(lane, co.sms if co else 0, self.gpu.num_sms)
        co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
        steps, durations = (
            self._steady_steps(batch, lane, sms, co) if batch.steady_steps > 1 else (1, None)
        )
        if durations is not None:
            durations = durations[:steps]
        elif steps > 1:
            durations = self.model.predict_decode_run(
                shape.n_decode, shape.decode_ctx_sum, steps, sms, co_shape, co_sms
            )
        else:
            durations = np.array([self.model.predict(shape, sms, co_shape, co_sms)])
        for req in batch.decode:
            kv.grow(req.id, req.kv_tokens + steps)
            req.in_flight = True
        cum = np.cumsum(durations)
        total = float(cum[-1])
        run = Run(
            lane,
            batch,
            shape,
            sms,
            steps,
            now,
            durations,
            cum / total,
            duration=total,
            last=now,
            end=now + total,
            co_label=_label(co),
        )
        run.breaks.append((now, 0.0))
        self.in_flight[lane] = run
        if self.record_decisions:
            self.decisions.append((lane.value, str(self.partition), batch.describe(), steps))
        if co is not None:
            self._rerate(co)
        self._schedule_end(run)

    def _steady_steps(
        self, batch: Batch, lane: Lane, sms: int, co: Run | None
    ) -> tuple[int, np.ndarray | None]:
        """How many identical decode iterations can pass before anything could change.

        Also returns the predicted durations when it had to compute them (at least ``steps``).
        """
        if not self.config.fast_forward or batch.prefill or not batch.decode:
            return 1, None
        reqs = batch.decode
        limit = min(
            batch.steady_steps,
            self.config.max_steps_per_event,
            min(r.output_tokens - r.generated for r in reqs),
        )
        if limit <= 1:
            return 1, None
        limit = self._kv_steps(reqs, limit)
        if limit <= 1:
            return 1, None
        horizon = self._horizon(lane, co, batch)
        if math.isinf(horizon):
            return limit, None
        shape = batch.shape()
        co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
        durations = self.model.predict_decode_run(
            shape.n_decode, shape.decode_ctx_sum, limit, sms, co_shape, co_sms
        )
        # The iteration running when the horizon arrives still completes; the next one is
        # decided with the new state.
        ends = np.cumsum(durations)
        steps = max(1, min(limit, int(np.searchsorted(ends, horizon - self.env.now)) + 1))
        return steps, durations

    def _horizon(self, lane: Lane, co: Run | None, batch: Batch) -> float:
        """The next moment something outside a steady run could change its lane's decision."""
        if co is None:
            return self._next_arrival()
        if batch.through_arrivals and co.lane is Lane.PREFILL:
            return co.end  # arrivals only queue behind the running prefill batch
        return min(self._next_arrival(), co.end)

    def _kv_steps(self, reqs: list[Request], limit: int) -> int:
        bs = self.kv.block_size
        slack = np.fromiter(
            (self.kv.held(r.id) * bs - r.kv_tokens for r in reqs), np.int64, len(reqs)
        )
        free = self.kv.free_blocks

        def blocks(m: int) -> int:
            over = m - slack
            return int(np.sum(np.where(over > 0, -(-over // bs), 0)))

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

    def _preempt(self, req: Request) -> None:
        if req.in_flight:
            raise SimulationError(
                f"policy {self.policy.name!r} preempted request {req.id} while another lane runs it"
            )
        self.kv.keep_for_recompute(req)
        self._free_kv(req)
        if req.status is Status.RUNNING:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        req.reset_for_recompute()
        self.waiting.insert(0, req)

    # ----------------------------------------------------------------- executing
    def _co_runner(self, lane: Lane) -> Run | None:
        for other, run in self.in_flight.items():
            if other is not lane:
                return run
        return None

    def _rerate(self, run: Run) -> None:
        """The co-runner of ``run`` changed: recompute its remaining time at the new rate."""
        now = self.env.now
        run.remaining = max(0.0, run.remaining - (now - run.last) / run.duration)
        run.breaks.append((now, 1.0 - run.remaining))
        co = self._co_runner(run.lane)
        co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
        if run.steps > 1:
            durations = self.model.predict_decode_run(
                run.shape.n_decode, run.shape.decode_ctx_sum, run.steps, run.sms, co_shape, co_sms
            )
            run.duration = float(durations.sum())
        else:
            run.duration = self.model.predict(run.shape, run.sms, co_shape, co_sms)
        run.last = now
        run.end = now + run.remaining * run.duration
        if co is not None:
            run.co_label = _label(co)
        self._schedule_end(run)

    def _schedule_end(self, run: Run) -> None:
        run.version += 1
        version = run.version

        def done(_event: simpy.Event) -> None:
            if run.version == version:
                self._complete(run)

        self.env.timeout(max(0.0, run.end - self.env.now)).callbacks.append(done)

    def _complete(self, run: Run) -> None:
        now = self.env.now
        del self.in_flight[run.lane]
        batch = run.batch
        if run.steps > 1:
            run.breaks.append((now, 1.0))
            bt, bf = zip(*run.breaks, strict=True)
            step_ends = np.interp(run.step_fraction, bf, bt)
            step_ends[-1] = now
        else:
            step_ends = np.array([now])
        finished: list[Request] = []
        prefilled: list[Request] = []
        for chunk in batch.prefill:
            req = chunk.request
            req.in_flight = False
            req.kv_tokens = chunk.start + chunk.length
            if req.kv_tokens >= req.prefill_target:
                if req.generated == 0:
                    req.first_token_s = now
                req.generated += 1
                req.token_times.append(now)
                if req.generated >= req.output_tokens:
                    finished.append(req)
                else:
                    prefilled.append(req)
        k = run.steps
        if batch.decode:
            self.decode_steps += k
        for req in batch.decode:
            req.in_flight = False
            req.kv_tokens += k
            req.generated += k
            req.token_times.append(step_ends if k > 1 else now)
            if req.generated >= req.output_tokens:
                finished.append(req)
        for req in finished:
            req.finish_s = now
            req.status = Status.FINISHED
            self._free_kv(req)
            self.running.remove(req)
        for req in prefilled:
            self._prefill_done(req)
        self._iters.append((run, step_ends))
        self._sample()
        co = self._co_runner(run.lane)
        if co is not None:
            self._rerate(co)
        self._dispatch()

    # ----------------------------------------------------------------- recording
    def _sample(self) -> None:
        p = self.partition
        self._timeline.append(
            (
                self.env.now,
                len(self.waiting),
                len(self.running),
                self.kv.usage,
                p.mixed_sms,
                p.prefill_sms,
                p.decode_sms,
            )
        )

    def _timeline_table(self) -> dict[str, np.ndarray]:
        if not self._timeline:
            return {c: np.empty(0) for c in TIMELINE_COLUMNS}
        arr = np.array(self._timeline, dtype=float)
        return {c: arr[:, i] for i, c in enumerate(TIMELINE_COLUMNS)}

    def _iteration_table(self) -> dict[str, np.ndarray]:
        """One row per executed iteration (steady runs expanded step by step)."""
        if not self._iters:
            return {c: np.empty(0) for c in ITERATION_COLUMNS}
        runs = [run for run, _ in self._iters]
        steps = np.array([run.steps for run in runs])
        ends = np.concatenate([e for _, e in self._iters])
        first = np.cumsum(steps) - steps  # row of each run's first iteration
        starts = np.concatenate(([0.0], ends[:-1]))
        starts[first] = [run.start for run in runs]
        # Context read per iteration: a steady decode run grows by one token per request a step.
        step_in_run = np.arange(len(ends)) - np.repeat(first, steps)
        n_decode = np.array([run.shape.n_decode for run in runs])
        ctx0 = np.array(
            [
                run.shape.decode_ctx_sum + sum(run.shape.prefill_q) + sum(run.shape.prefill_ctx)
                for run in runs
            ]
        )

        def per_run(values: list, dtype: object = None) -> np.ndarray:
            return np.repeat(np.array(values, dtype=dtype), steps)

        return {
            "lane": per_run([run.lane.value for run in runs], object),
            "start_s": starts,
            "end_s": ends,
            "sms": per_run([run.sms for run in runs]),
            "prefill_tokens": per_run([run.shape.prefill_tokens for run in runs]),
            "prefill_chunks": per_run([len(run.shape.prefill_q) for run in runs]),
            "decode_requests": np.repeat(n_decode, steps),
            "context_tokens": np.repeat(ctx0, steps) + np.repeat(n_decode, steps) * step_in_run,
            "prefill_context_tokens": per_run([sum(run.shape.prefill_ctx) for run in runs]),
            "predicted_s": np.concatenate([run.predicted for run in runs]),
            "co_runner": per_run([run.co_label for run in runs], object),
        }


def _label(run: Run | None) -> str:
    if run is None:
        return ""
    s = run.shape
    return f"{run.lane.value}:{run.sms}sm:{s.prefill_tokens}p+{s.n_decode}d"


def make_simulator(workload: Workload, policy: Policy, model: LatencyModel, *args, **kwargs):
    """The engine a policy runs on: one GPU, or two for policies with ``gpus = 2``."""
    gpus = getattr(policy, "gpus", 1)
    if gpus == 1:
        return Simulator(workload, policy, model, *args, **kwargs)
    if gpus == 2:
        from twin.disagg import DisaggSimulator

        return DisaggSimulator(workload, policy, model, *args, **kwargs)
    raise SimulationError(f"policy {policy.name!r} asks for {gpus} GPUs; the simulator has 1 or 2")


@contextmanager
def _fewer_collections(gen0: int = 10_000):
    """Run the cyclic garbage collector less often while simulating.

    A run allocates many short-lived objects (views, batches, events) and few cycles; with the
    default threshold the collector rescans the growing request table again and again.
    """
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], gen0), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)
