"""The simulator: the scheduling core executed on a SimPy clock with the latency model's times.

An arrival process hands the workload's requests to the core (``twin.core``) as they arrive;
each batch the core launches ends with an event at its predicted time, when the core applies
it and asks the policy again. In split mode the two lanes share HBM: whenever either lane
starts or finishes a batch, the other's remaining time is re-rated with its new co-runner
(``twin.core.contention``), not frozen at launch. Decode-only batches the policy marks steady
are advanced several iterations per event (``twin.sim.fast_forward``); a policy that states
how its steps admit the queue runs through the arrivals and finishes that rule covers
(``twin.sim.arrivals``). Either way the result equals stepping one iteration at a time.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import simpy

from policies import Batch, BatchShape, KVCache, Lane, Policy, Request, Slo
from policies.prefix_cache import make_kv_cache
from profiler.model import LatencyModel
from traces import Workload
from twin.checks import check_engine_config
from twin.core import Run, SchedulingCore, run_label
from twin.core.aborts import abort_schedule
from twin.core.contention import rerate
from twin.errors import SimulationError
from twin.sim.arrivals import (
    ArrivalPhase,
    apply_arrival_run,
    arrival_run_decisions,
    plan_through_arrivals,
)
from twin.sim.fast_forward import steady_steps
from twin.sim.phases import plan_phase


@dataclass(frozen=True)
class EngineConfig:
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes: int = 4 * 10**9
    block_size: int = 16
    fast_forward: bool = True
    max_steps_per_event: int = 1 << 16
    num_kv_blocks: int | None = None  # overrides the count derived from GPU memory

    def __post_init__(self) -> None:
        check_engine_config(self)

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
class SimRun(Run):
    """A run under the fluid model: its progress re-rated whenever its co-runner changes."""

    # The cumulative share of the run's work done after each step (a list for short runs).
    step_fraction: np.ndarray | list[float] | None = None
    duration: float = 0.0  # total duration under the current co-runner
    remaining: float = 1.0  # fraction of the work left at ``last``
    last: float = 0.0
    end: float = 0.0
    breaks: list = field(default_factory=list)  # (time, fraction done) where the rate changed
    version: int = 0  # bumped on every re-rate; an end event of an older version is stale


@dataclass
class SimResult:
    requests: list[Request]
    iterations: dict[str, np.ndarray]
    timeline: dict[str, np.ndarray]
    decisions: list[tuple]
    partition_changes: int
    end_s: float


class Simulator(SchedulingCore):
    """One GPU. ``make_simulator`` picks the two-GPU engine for policies that need it."""

    # Nothing reads a simulated aggregated run's requests while it runs (see the core).
    flags_aggregated_runs = False

    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        model: LatencyModel,
        slo: Slo = Slo(),
        config: EngineConfig = EngineConfig(),
        progress: Callable[[int, int], None] | None = None,
        record_decisions: bool = False,
        aborts: Mapping[int, float] | None = None,
    ) -> None:
        """``aborts``: request id -> seconds at which its client goes away (none by default)."""
        kv = make_kv_cache(policy, config.kv_blocks(model), config.block_size)
        max_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        super().__init__(policy, model, kv, slo, max_len, record_decisions)
        self.workload = workload
        self.config = config
        self.progress = progress
        self.env = simpy.Environment()
        self._pending = [
            Request(i, float(t), int(p), int(o))
            for i, (t, p, o) in enumerate(
                zip(workload.arrival_s, workload.prompt_tokens, workload.output_tokens, strict=True)
            )
        ]
        # Arrival times as plain floats: read at every arrival and every steady run's horizon.
        self._arrival_times = [req.arrival_s for req in self._pending]
        if kv.prefix_caching and workload.prefix_hashes is not None:
            per_id = workload.prefix_block_tokens
            for req, ids in zip(self._pending, workload.prefix_hashes, strict=True):
                req.content, req.tokens_per_id = ids, per_id
        # A steady run may pass its requests' finishes when nothing outside it hears of them
        # before it ends (a closed loop's clients do: each sends its next request).
        self.runs_past_finishes = True
        self.events = 0  # runs completed: each one event, however many batches it stands for
        self._aborts = abort_schedule(aborts, workload.arrival_s)
        self._aborted = 0  # how many of ``_aborts`` have happened
        # A run may go on through the arrivals its policy admits (``twin.sim.arrivals``) when
        # the arrivals are known in advance, none can hit the prefix cache and no client goes.
        self.runs_through_arrivals = not self._aborts and not (
            kv.prefix_caching and workload.prefix_hashes is not None
        )

    def now(self) -> float:
        return self.env.now

    # ----------------------------------------------------------------- driving
    def run(self) -> SimResult:
        self.env.process(self._arrivals())
        if self._aborts:
            self.env.process(self._cancellations())
        with _fewer_collections():
            self.env.run()
        self.check_all_done()
        return SimResult(
            requests=self.requests,
            iterations=self.iteration_table(),
            timeline=self.timeline_table(),
            decisions=self.decisions,
            partition_changes=self.stats.partition_changes,
            end_s=self.env.now,
        )

    def _arrivals(self):
        arrivals = self._arrival_times
        n = len(arrivals)
        i = 0
        while i < n:
            t = float(arrivals[i])
            if t > self.env.now:
                yield self.env.timeout(t - self.env.now)
            first = i
            while i < n and arrivals[i] <= self.env.now:
                i += 1
            if self.progress is not None:
                self.progress(i, n)
            self.arrive(self._pending[first:i])

    def _cancellations(self):
        aborts = self._aborts
        while self._aborted < len(aborts):
            t = aborts[self._aborted][0]
            if t > self.env.now:
                yield self.env.timeout(t - self.env.now)
            first = self._aborted
            while self._aborted < len(aborts) and aborts[self._aborted][0] <= self.env.now:
                self._aborted += 1
            for _, rid in aborts[first : self._aborted]:
                self.abort(rid)

    def _next_abort(self) -> float:
        if self._aborted < len(self._aborts):
            return self._aborts[self._aborted][0]
        return math.inf

    def _next_arrival(self) -> float:
        if self._arrived < len(self._pending):
            return self._arrival_times[self._arrived]
        return math.inf

    # ----------------------------------------------------------------- executing
    def _plan(
        self, lane: Lane, batch: Batch, shape: BatchShape, sms: int, co: Run | None, now: float
    ) -> SimRun:
        # Phases are planned on one lane: a re-rated run keeps one shape for all its steps.
        if co is None and self.config.fast_forward and not self.partition.is_split:
            if batch.then is not None:
                return self._plan_then(lane, batch, shape, sms, now)
            if (
                batch.admits_arrivals is not None
                and self.runs_through_arrivals
                and batch.steady_steps > 1
            ):
                first = self.model.predict(shape, sms, None, 0)
                run = plan_through_arrivals(self, lane, batch, batch, shape, sms, now, first)
                if run is not None:
                    return run
            if batch.past_finishes and self.runs_past_finishes and batch.steady_steps > 1:
                run = self._plan_past_finishes(lane, batch, shape, sms, now)
                if run is not None:
                    return run
        steps, durations = (
            steady_steps(self, batch, lane, sms, co, shape) if batch.steady_steps > 1 else (1, None)
        )
        return self._new_run(lane, batch, shape, sms, co, now, steps, durations)

    def _plan_then(
        self, lane: Lane, batch: Batch, shape: BatchShape, sms: int, now: float
    ) -> SimRun:
        """A batch with prefill chunks and the steady decode steps its policy promised after
        it, as one run (of the batch alone when no step of the promise can follow)."""
        first = self.model.predict(shape, sms, None, 0)
        then = batch.then
        if then.admits_arrivals is not None and self.runs_through_arrivals:
            run = plan_through_arrivals(self, lane, batch, then, shape, sms, now, first)
            if run is not None:
                return run
        budget = self._horizon(lane, None, then) - now - first
        if budget <= 0:  # something changes during the first step
            return self._new_run(lane, batch, shape, sms, None, now, 1, (first,))
        decodes = batch.decode
        chunks = batch.prefill
        nd = len(decodes)
        # After the first step the decodes hold a token more, the prompts their first.
        remaining = [r.output_tokens - r.generated - 1 for r in decodes]
        remaining += [c.request.output_tokens - c.request.generated - 1 for c in chunks]

        def token_of(i: int) -> int:
            if i < nd:
                return decodes[i].kv_tokens + 1
            c = chunks[i - nd]
            return c.start + c.length

        def slack() -> list[int]:
            kv = self.kv
            room = [s - 1 for s in kv.room(decodes)]
            held, bs = kv.held, kv.block_size
            return room + [held(c.request.id) * bs - c.start - c.length for c in chunks]

        ctx = shape.decode_ctx_sum + sum(c.start + c.length for c in chunks)
        past = then.past_finishes and self.runs_past_finishes
        promised = min(then.steady_steps, self.config.max_steps_per_event - 1)
        steps, durations, phase = plan_phase(
            self, lambda: decodes + [c.request for c in chunks], remaining, token_of, ctx,
            promised, past, budget, sms, slack,
        )  # fmt: skip
        if not steps:
            return self._new_run(lane, batch, shape, sms, None, now, 1, (first,))
        if isinstance(durations, list):
            durations = [first, *durations]
        else:
            durations = np.concatenate(([first], durations))
        run = self._new_run(lane, batch, shape, sms, None, now, steps + 1, durations)
        phase.offset = 1
        run.phase = phase
        return run

    def _plan_past_finishes(
        self, lane: Lane, batch: Batch, shape: BatchShape, sms: int, now: float
    ) -> SimRun | None:
        """A steady decode batch that goes on past its requests' finishes, as one run; None
        when a plain steady run is that run's own (one step, or a promise no finish cuts)."""
        budget = self._horizon(lane, None, batch) - now
        reqs = batch.decode
        remaining = [r.output_tokens - r.generated for r in reqs]
        if min(remaining) >= batch.steady_steps or budget <= 0:
            return None  # no finish inside the promise: a plain steady run
        steps, durations, phase = plan_phase(
            self, lambda: reqs, remaining, lambda i: reqs[i].kv_tokens,
            shape.decode_ctx_sum - len(reqs), batch.steady_steps, True, budget, sms,
            lambda: self.kv.room(reqs),
        )  # fmt: skip
        if steps <= 1:
            return None  # one step: predicted as any single iteration is
        run = self._new_run(lane, batch, shape, sms, None, now, steps, durations)
        if len(phase.segments) > 1:
            run.phase = phase
        # One segment: the run a plain steady run would be (the same limits, horizon and
        # durations), already planned.
        return run

    def _new_run(
        self,
        lane: Lane,
        batch: Batch,
        shape: BatchShape,
        sms: int,
        co: Run | None,
        now: float,
        steps: int,
        durations: list[float] | np.ndarray | None,
    ) -> SimRun:
        co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
        if steps == 1:
            # Most runs: one iteration, in plain floats (its one fraction done is 1.0).
            total = (
                float(durations[0])
                if durations is not None
                else self.model.predict(shape, sms, co_shape, co_sms)
            )
            predicted, fraction = (total,), None
        elif isinstance(durations, list):
            # A short run predicted step by step: summed and scaled in plain floats, the same
            # sequential additions and divisions as numpy's cumsum and quotient.
            total, cum = 0.0, []
            for d in durations:
                total += d
                cum.append(total)
            predicted, fraction = durations, [c / total for c in cum]
        else:
            if durations is None:
                durations = self.model.predict_decode_run(
                    shape.n_decode, shape.decode_ctx_sum, steps, sms, co_shape, co_sms
                )
            predicted = np.asarray(durations[:steps], dtype=np.float64)
            cum = predicted.cumsum()
            total = float(cum[-1])
            fraction = cum / total
        return SimRun(
            lane,
            batch,
            shape,
            sms,
            steps,
            now,
            predicted,
            co_label=run_label(co),
            step_fraction=fraction,
            duration=total,
            last=now,
            end=now + total,
            breaks=[(now, 0.0)],
        )

    def _grow_phase(self, kv: KVCache, batch: Batch, phase, steps: int) -> None:
        # A run through arrivals takes its blocks when it ends (``apply_arrival_run``).
        if type(phase) is not ArrivalPhase:
            super()._grow_phase(kv, batch, phase, steps)

    def _record_decisions(self, lane: Lane, batch: Batch, run: Run) -> None:
        if type(run.phase) is ArrivalPhase:
            arrival_run_decisions(self, lane, batch, run)
        else:
            super()._record_decisions(lane, batch, run)

    def _apply(self, run: Run, now: float, step_ends, tokens=None) -> None:
        if type(run.phase) is ArrivalPhase:
            apply_arrival_run(self, run, now, step_ends)
        else:
            super()._apply(run, now, step_ends, tokens)

    def _execute(self, run: SimRun, kv: KVCache) -> None:
        co = self._co_runner(run.lane)
        if co is not None:
            self._rerate(co)
        self._schedule_end(run)

    def _horizon(self, lane: Lane, co: Run | None, batch: Batch) -> float:
        """The next moment something outside a steady run could change its lane's decision."""
        if co is None:
            horizon = math.inf if batch.arrivals_queue else self._next_arrival()
        elif batch.through_arrivals and co.lane is Lane.PREFILL:
            horizon = co.end  # arrivals only queue behind the running prefill batch
        else:
            horizon = min(self._next_arrival(), co.end)
        return min(horizon, self._next_abort()) if self._aborts else horizon

    def _rerate(self, run: SimRun) -> None:
        """The co-runner of ``run`` changed: recompute its remaining time at the new rate."""
        now = self.env.now
        co = self._co_runner(run.lane)
        co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
        rerate(run, now, self.model, co_shape, co_sms)
        run.breaks.append((now, 1.0 - run.remaining))
        if co is not None:
            run.co_label = run_label(co)
        self._schedule_end(run)

    def _schedule_end(self, run: SimRun) -> None:
        run.version += 1
        version = run.version

        def done(_event: simpy.Event) -> None:
            if run.version == version:
                self._complete(run)

        self.env.timeout(max(0.0, run.end - self.env.now)).callbacks.append(done)

    def _complete(self, run: SimRun) -> None:
        now = self.env.now
        self.events += 1
        if run.steps > 1:
            run.breaks.append((now, 1.0))
            if len(run.breaks) == 2 and isinstance(run.step_fraction, list):
                # A short run never re-rated: its ends stay plain floats, the records and the
                # token log take them as they are.
                step_ends = _interp_once(run.step_fraction, run.breaks[0][0], now)
            else:
                bt, bf = zip(*run.breaks, strict=True)
                step_ends = np.interp(run.step_fraction, bf, bt)
            step_ends[-1] = now
        else:
            step_ends = (now,)
        self._apply(run, now, step_ends)
        co = self._co_runner(run.lane)
        if co is not None:
            self._rerate(co)
        self._dispatch()


def _interp_once(fractions: list[float], start: float, end: float) -> list[float]:
    """``np.interp(fractions, (0, 1), (start, end))`` in plain floats, element for element:
    numpy's formula ``slope * (x - x0) + y0`` with its ends taken exactly."""
    slope = (end - start) / (1.0 - 0.0)
    return [
        end if x >= 1.0 else start if x <= 0.0 else slope * (x - 0.0) + start for x in fractions
    ]


def make_simulator(
    workload: Workload,
    policy: Policy,
    model: LatencyModel,
    *args,
    concurrency: int | None = None,
    **kwargs,
):
    """The engine a policy runs on: one GPU, or two for policies with ``gpus = 2``; with
    ``concurrency`` a closed loop of that many clients instead of the workload's arrivals."""
    gpus = getattr(policy, "gpus", 1)
    if concurrency is not None:
        if gpus != 1:
            msg = f"--concurrency runs on one GPU; policy {policy.name!r} needs {gpus}"
            raise SimulationError(msg)
        from twin.sim.closed_loop import ClosedLoopSimulator

        return ClosedLoopSimulator(
            workload, policy, model, *args, concurrency=concurrency, **kwargs
        )
    if gpus == 1:
        return Simulator(workload, policy, model, *args, **kwargs)
    if gpus == 2:
        from twin.sim.disagg import DisaggSimulator

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
