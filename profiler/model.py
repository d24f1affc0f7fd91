"""The latency model interface: seconds for a batch on some SMs, beside an optional co-runner.

Every model is a per-operator-class roofline: an operator takes
``max(flops / compute_rate(op, sms), bytes / (bandwidth(op, sms) * share))`` where ``share``
is the fraction of its bandwidth left when another lane competes for HBM, plus a fixed
per-iteration overhead. Models differ in where the curves come from: the datasheet model
derives them from published peaks, a measured profile fits them from a GPU sweep.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from policies.batch import BatchShape
from policies.partition import GpuSpec
from profiler.config import ModelConfig
from profiler.decode_steps import PLAIN_RUN_STEPS, roofline_steps
from profiler.mixed import MixedBatchCost
from profiler.ops import OP_CLASSES, CostModel


class LatencyModel(ABC):
    """Predicts batch latency; subclasses supply the SM-dependent compute and bandwidth curves."""

    def __init__(self, gpu: GpuSpec, config: ModelConfig, source: str, measured: bool) -> None:
        self.gpu = gpu
        self.config = config
        self.source = source
        self.measured = measured
        self.costs = CostModel(config)
        self.mixed = MixedBatchCost()  # what a batch mixing the phases pays beyond its parts
        self._curves: dict[tuple[str, int], tuple[float, float]] = {}
        # Every operator class's curves on one SM count, for the per-batch loops below.
        self._curve_rows: dict[int, tuple[tuple[str, float, float], ...]] = {}
        # A co-runner's demand is asked for at every re-rate of the other lane.
        self._demand: dict[tuple[BatchShape, int], tuple[float, float]] = {}
        # A batch alone is the roofline of ``op_times`` at full bandwidth, unless a subclass
        # reshapes the per-class times or the sharing.
        cls = type(self)
        self._plain_alone = cls.op_times is LatencyModel.op_times and (
            cls.share is LatencyModel.share
        )
        # The plain-float decode steps mirror this class's predict_decode_run; a subclass
        # that reshapes the run has none.
        plain_run = cls.predict_decode_run is LatencyModel.predict_decode_run
        self._step_builder = self._plain_steps if plain_run else None
        self._alone_step_consts: dict[tuple[int, int], tuple[float, ...]] = {}

    @abstractmethod
    def compute_rate(self, op: str, sms: int) -> float:
        """Achievable FLOP/s of an operator class on ``sms`` SMs."""

    @abstractmethod
    def bandwidth(self, op: str, sms: int) -> float:
        """Achievable HBM bytes/s of an operator class on ``sms`` SMs with no co-runner."""

    @property
    @abstractmethod
    def hbm_bandwidth(self) -> float:
        """Total achievable HBM bandwidth that co-running lanes share."""

    @abstractmethod
    def overhead_s(self, shape: BatchShape) -> float:
        """Per-iteration time outside the operators (launch, sampling, scheduling)."""

    def decode_overhead_s(self, n_decode: int, ctx_sum: int) -> float:
        """``overhead_s`` of a decode batch of ``n_decode`` requests over ``ctx_sum`` tokens,
        asked at every decode run; a model whose overhead needs no shape says so directly."""
        return self.overhead_s(BatchShape.decode(n_decode, ctx_sum))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A class whose overhead_s comes before its decode_overhead_s in the method order
        # reshapes the overhead: it is asked of every decode batch too.
        super().__init_subclass__(**kwargs)

        def owner(name: str) -> int:
            return next(i for i, k in enumerate(cls.__mro__) if name in k.__dict__)

        if owner("overhead_s") < owner("decode_overhead_s"):
            cls.decode_overhead_s = LatencyModel.decode_overhead_s

    @property
    def label(self) -> str:
        """How reports name the model's provenance."""
        return (
            self.source
            if self.measured
            else f"{self.source} (datasheet estimate, not a measurement)"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": type(self).__name__,
            "label": self.label,
            "measured": self.measured,
            "gpu": self.gpu.name,
            "num_sms": self.gpu.num_sms,
            "sm_granularity": self.gpu.sm_granularity,
            "model": self.config.name,
            "mixed_batch_cost": self.mixed.to_dict(),
        }

    def curves(self, op: str, sms: int) -> tuple[float, float]:
        key = (op, sms)
        hit = self._curves.get(key)
        if hit is None:
            if sms <= 0:
                raise ValueError(f"a batch needs at least one SM, got {sms}")
            hit = (self.compute_rate(op, sms), self.bandwidth(op, sms))
            self._curves[key] = hit
        return hit

    def _row(self, sms: int) -> tuple[tuple[str, float, float], ...]:
        row = self._curve_rows.get(sms)
        if row is None:
            row = self._curve_rows[sms] = tuple((op, *self.curves(op, sms)) for op in OP_CLASSES)
        return row

    def op_times(self, shape: BatchShape, sms: int, share: float = 1.0) -> dict[str, float]:
        cost = self.costs.costs(shape)
        flops, nbytes = cost.flops, cost.bytes
        out = {}
        for op, rate, bw in self._row(sms):
            f, b = flops[op], nbytes[op]
            out[op] = 0.0 if f == 0.0 and b == 0.0 else max(f / rate, b / (bw * share))
        return out

    def _alone_times(self, shape: BatchShape, sms: int) -> tuple[float, float, float, float]:
        """``op_times(shape, sms)``'s values in ``OP_CLASSES`` order, in plain floats: the
        cost model's counts and the roofline with the same operations in the same order,
        without its dictionaries (a simulator predicts one new shape per decision)."""
        row = self._curve_rows.get(sms) or self._row(sms)
        (_, g_rate, g_bw), (_, p_rate, p_bw), (_, d_rate, d_bw), (_, o_rate, o_bw) = row
        c = self.costs
        prefill_q, n, ctx_sum = shape.prefill_q, shape.n_decode, shape.decode_ctx_sum
        prefill_tokens = sum(prefill_q)
        tokens = prefill_tokens + n
        if tokens:
            rows = shape.sampled
            f = float(c.gemm_flops_per_token * tokens + c.head_flops_per_row * rows)
            head = float(c.head_weight_bytes) if rows > 0 else 0.0
            b = float(
                c.gemm_weight_bytes
                + c.gemm_act_bytes_per_token * tokens
                + head
                + c.head_act_bytes_per_row * rows
            )
            t_gemm = 0.0 if f == 0.0 and b == 0.0 else max(f / g_rate, b / g_bw)
        else:
            t_gemm = 0.0
        if prefill_q:
            pairs = 0.0
            ctx = 0
            for q, k in zip(prefill_q, shape.prefill_ctx, strict=True):
                pairs += q * (k + (q + 1) / 2.0)
                ctx += k + q
            f = c.attn_flops_per_pair * pairs
            b = c.attn_q_bytes * prefill_tokens + c.attn_kv_bytes_per_ctx * ctx
            t_prefill = 0.0 if f == 0.0 and b == 0.0 else max(f / p_rate, b / p_bw)
        else:
            t_prefill = 0.0
        f = c.attn_flops_per_pair * ctx_sum
        b = c.attn_q_bytes * n + c.attn_kv_bytes_per_ctx * ctx_sum
        t_decode = 0.0 if f == 0.0 and b == 0.0 else max(f / d_rate, b / d_bw)
        f, b = c.other_flops_per_token * tokens, c.other_bytes_per_token * tokens
        t_other = 0.0 if f == 0.0 and b == 0.0 else max(f / o_rate, b / o_bw)
        return t_gemm, t_prefill, t_decode, t_other

    def op_roofline(self, shape: BatchShape, sms: int) -> dict[str, tuple[float, float]]:
        """Per operator class, (compute seconds, memory seconds at full bandwidth) on ``sms``.

        An operator takes ``max(compute, memory / share)`` when it keeps ``share`` of its
        bandwidth, which lets a policy try many shares without recounting the work.
        """
        cost = self.costs.costs(shape)
        flops, nbytes = cost.flops, cost.bytes
        if sms <= 0:
            return {op: (flops[op], nbytes[op]) for op in OP_CLASSES}
        return {op: (flops[op] / rate, nbytes[op] / bw) for op, rate, bw in self._row(sms)}

    def op_bytes(self, shape: BatchShape) -> dict[str, float]:
        """HBM bytes each operator class moves in one iteration of ``shape``."""
        return dict(self.costs.costs(shape).bytes)

    def demand(self, shape: BatchShape, sms: int) -> tuple[float, float]:
        """HBM bytes/s a batch draws alone: while its kernels run, and averaged over its time."""
        if shape.is_empty:
            return 0.0, 0.0
        key = (shape, sms)
        hit = self._demand.get(key)
        if hit is None:
            if len(self._demand) >= 256:
                self._demand.clear()
            hit = self._demand[key] = self._demand_alone(shape, sms)
        return hit

    def _demand_alone(self, shape: BatchShape, sms: int) -> tuple[float, float]:
        busy = sum(self.op_times(shape, sms).values())
        nbytes = self.costs.costs(shape).total_bytes
        return nbytes / busy, nbytes / (busy + self.overhead_s(shape))

    def share(
        self, shape: BatchShape, sms: int, co_runner: BatchShape | None, co_sms: int
    ) -> float:
        """Fraction of its bandwidth a lane keeps beside a co-runner: proportional sharing.

        While a lane's kernels run they draw their alone bandwidth; the co-runner draws its
        average. When the two exceed the HBM's bandwidth, the lane's memory-bound time
        stretches by the oversubscription.
        """
        if co_runner is None or co_runner.is_empty or shape.is_empty:
            return 1.0
        own, _ = self.demand(shape, sms)
        _, other = self.demand(co_runner, co_sms)
        return min(1.0, self.hbm_bandwidth / (own + other))

    def predict(
        self, shape: BatchShape, sms: int, co_runner: BatchShape | None = None, co_sms: int = 0
    ) -> float:
        if shape.is_empty:
            return 0.0
        if self._plain_alone and (co_runner is None or co_runner.is_empty):
            alone = self._alone_times(shape, sms)
            mixed = self.mixed
            if mixed.is_zero or not shape.prefill_q or shape.n_decode == 0:
                extra = 0.0
            else:
                extra = mixed.extra_s(shape, dict(zip(OP_CLASSES, alone, strict=True)))
            return sum(alone) + self.overhead_s(shape) + extra
        share = self.share(shape, sms, co_runner, co_sms)
        times = self.op_times(shape, sms, share)
        return sum(times.values()) + self.overhead_s(shape) + self.mixed.extra_s(shape, times)

    def slowdown(self, shape: BatchShape, sms: int, co_runner: BatchShape, co_sms: int) -> float:
        """How many times slower ``shape`` runs beside ``co_runner`` than alone."""
        return self.predict(shape, sms, co_runner, co_sms) / self.predict(shape, sms)

    def decode_step_s(
        self,
        n_decode: int,
        ctx_sum: int,
        sms: int,
        co_runner: BatchShape | None = None,
        co_sms: int = 0,
    ) -> Callable[[int], float] | None:
        """Step j's seconds of the run ``predict_decode_run`` predicts, in plain floats and
        bit for bit (the same operations in the same order), for callers that want a few
        steps at a time; None where a model has only the vectorised form."""
        builder = self._step_builder
        if builder is None:
            return None  # a subclass that reshapes the run would have to reshape this too
        return builder(self, n_decode, ctx_sum, sms, co_runner, co_sms)

    # Builds step j of ``_decode_run_array`` in plain floats: (model, n_decode, ctx_sum, sms,
    # co_runner, co_sms) -> step function, or None where a run has no plain-float form.
    _plain_steps = staticmethod(roofline_steps)

    def predict_decode_run(
        self,
        n_decode: int,
        ctx_sum: int,
        steps: int,
        sms: int,
        co_runner: BatchShape | None = None,
        co_sms: int = 0,
        first: int = 0,
    ) -> np.ndarray:
        """Durations of ``steps`` consecutive decode iterations of the same requests.

        Step j of the run attends to ``ctx_sum + j * n_decode`` tokens in all; the durations
        returned are those of steps ``first`` to ``first + steps - 1``, equal to the same
        slice of the whole run's (its per-iteration overhead is the run's first step's), so
        a caller can predict a run in pieces. Vectorised, so the simulator can advance many
        identical iterations in one event; a short run is its plain-float steps (the same
        numbers), where numpy's per-call cost outweighs a few steps' work.
        """
        if steps <= PLAIN_RUN_STEPS:
            step = self._plain_steps(self, n_decode, ctx_sum, sms, co_runner, co_sms)
            if step is not None:
                return np.array([step(j) for j in range(first, first + steps)], dtype=np.float64)
        return self._decode_run_array(n_decode, ctx_sum, steps, sms, co_runner, co_sms, first)

    def _decode_run_array(
        self,
        n_decode: int,
        ctx_sum: int,
        steps: int,
        sms: int,
        co_runner: BatchShape | None,
        co_sms: int,
        first: int,
    ) -> np.ndarray:
        """``predict_decode_run`` in numpy, the definition its plain-float steps mirror."""
        ctx = ctx_sum + n_decode * np.arange(first, first + steps, dtype=np.float64)
        c = self.costs
        gf, gb = c.gemm(n_decode, n_decode)
        af, ab = c.attn_decode(n_decode, ctx)
        of, ob = c.other(n_decode)
        overhead = self.decode_overhead_s(n_decode, ctx_sum)

        def busy(share: np.ndarray | float) -> np.ndarray:
            rate, bw = self.curves("gemm", sms)
            t = np.maximum(gf / rate, gb / (bw * share))
            rate, bw = self.curves("attn_decode", sms)
            t = t + np.maximum(af / rate, ab / (bw * share))
            rate, bw = self.curves("other", sms)
            return t + np.maximum(of / rate, ob / (bw * share))

        alone = busy(1.0)
        if co_runner is None or co_runner.is_empty:
            return alone + overhead
        _, other = self.demand(co_runner, co_sms)
        own = (gb + ab + ob) / alone
        return busy(np.minimum(1.0, self.hbm_bandwidth / (own + other))) + overhead
