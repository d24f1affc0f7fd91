"""Nexus: proactive intra-GPU prefill/decode disaggregation with a contention-aware cost model.

Source: Nexus (arXiv 2507.06608), section 4. Prefill and decode run as two lanes on disjoint
SM partitions, always. Whenever a lane frees up the split is re-evaluated with Nexus's cost
model:

- each phase's latency is the sum of its operators' times on its SMs, which fall with
  diminishing returns (the latency model's SM curves);
- decode's memory traffic competes with prefill's: with ``P_attn = T_prefill_attn /
  T_prefill`` the chance that a decode step overlaps prefill attention (otherwise it overlaps
  the dense layers), decode's effective bandwidth is
  ``B_eff = B * [P_attn * m_d/(m_d + m_p1) + (1 - P_attn) * m_d/(m_d + m_p2)]``;
- the objective follows KV-cache usage: below ``kv_threshold`` (70%) prefill-priority, the
  fastest prefill with decode within ``decode_slack`` (1.1x) of its all-SM latency; above it
  decode-priority, the fastest decode with prefill within ``prefill_slack`` (1.3x);
- a greedy walk from the current split in ``sm_step`` SM steps stops when the objective stops
  improving; a new split is applied only if it improves the objective by more than
  ``hysteresis`` (or repairs a violated constraint);
- the split is re-planned when what it weighs changes (an arrival while the prefill lane is
  free, an admission, finish or preemption, a new prefill batch, KV usage crossing the
  threshold), not at every decode step; an arrival behind a running prefill batch waits.

The prefill queue is shortest-remaining-prompt-first with aging (score = remaining prompt
tokens - ``aging`` * seconds waited, γ = 15 in the paper); decode is FCFS, and both lanes keep
vLLM's token and sequence limits.

Simplifies: the bytes in B_eff are rates (bytes per second of each window) so that windows of
different lengths weigh correctly, and decode keeps its full bandwidth when the two demands
fit in HBM together; steps are the hardware's split granularity (8 SMs on H100 green
contexts) rather than 1% of the SMs; the work weighed is the next batch each lane would run
(the running one if the lane is busy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policies.base import SchedulingPolicy
from policies.batch import UNTIL_CHANGE, Batch, BatchShape
from policies.numbers import check_fields
from policies.partition import Lane, Partition
from policies.registry import register
from policies.shapes import decode_shape, prefill_shape
from policies.view import EngineView, LatencyModel


@dataclass(frozen=True)
class NexusParams:
    kv_threshold: float = 0.7
    decode_slack: float = 1.1
    prefill_slack: float = 1.3
    hysteresis: float = 0.05
    aging: float = 15.0
    sm_step: int = 8
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0.0 < self.kv_threshold <= 1.0:
            raise ValueError("kv_threshold must be in (0, 1]")
        if self.decode_slack < 1.0 or self.prefill_slack < 1.0:
            raise ValueError("decode_slack and prefill_slack must be at least 1")
        if self.hysteresis < 0.0 or self.aging < 0.0:
            raise ValueError("hysteresis and aging must not be negative")
        if self.sm_step < 1 or self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("sm_step, max_num_batched_tokens and max_num_seqs must be >= 1")


@dataclass(frozen=True, slots=True)
class SplitScore:
    """How good one split is: feasible first, then the smaller violation, then the objective."""

    decode_sms: int
    violation: float  # how far over its bound the constrained phase is (0 when feasible)
    objective: float  # seconds of the phase being minimised
    prefill_s: float
    decode_s: float

    def key(self) -> tuple[float, float]:
        return (self.violation, self.objective)


@register("nexus", NexusParams)
class NexusPolicy(SchedulingPolicy):
    params: NexusParams
    split_ignores_arrivals = True  # plans from the running prefill batch while there is one

    def __init__(self, params: NexusParams) -> None:
        super().__init__(params)
        self._last: tuple[tuple[tuple, tuple], Batch | None, Partition] | None = None
        self._roofs = RooflineCache()

    # ----------------------------------------------------------------- queues and batches
    def order_waiting(self, view: EngineView):
        gamma, now = self.params.aging, view.now
        return sorted(view.waiting, key=lambda r: r.remaining_prefill - gamma * (now - r.arrival_s))

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        return self.split_lane_batch(view, lane)

    def steady_limit(self, view: EngineView, batch: Batch) -> int:
        """Steps before KV usage crosses ``kv_threshold`` and the objective would flip."""
        kv = view.kv
        target = math.ceil(self.params.kv_threshold * kv.num_blocks)
        if kv.used_blocks >= target:
            return UNTIL_CHANGE  # usage only grows while decoding: the objective stays
        bs, n = kv.block_size, len(batch.decode)
        longest = min(r.remaining_output for r in batch.decode)  # no run goes past a finish
        if kv.used_blocks + n * (longest // bs + 2) < target:
            return UNTIL_CHANGE  # even the longest possible run stays below the threshold
        tokens = np.fromiter((r.kv_tokens for r in batch.decode), np.int64, len(batch.decode))
        held = np.fromiter((kv.held(r.id) for r in batch.decode), np.int64, len(batch.decode))

        def used_after(steps: int) -> int:
            return kv.used_blocks + int(np.maximum(0, -(-(tokens + steps) // bs) - held).sum())

        lo, hi = 0, max(1, longest)  # used_after(lo) stays below the threshold
        if used_after(hi) < target:
            return UNTIL_CHANGE
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if used_after(mid) < target:
                lo = mid
            else:
                hi = mid
        return lo + 1

    # ----------------------------------------------------------------- the split
    def partition(self, view: EngineView) -> Partition:
        """Re-plan the split when the queues changed since the last call, else keep it."""
        prefill_batch = view.in_flight.get(Lane.PREFILL)
        state = (
            view.partition,
            # A running prefill batch is what the plan weighs; the queue behind it is not.
            len(view.waiting) if prefill_batch is None else -1,
            len(view.running),
            view.kv.usage >= self.params.kv_threshold,
        )
        last = self._last
        # The running prefill batch is compared by identity; holding it keeps its id unique.
        if last is not None and state in last[0] and last[1] is prefill_batch:
            return last[2]
        part = self.plan_split(view)
        # Asked again once the engine has moved to ``part``, the plan would weigh the same
        # work from where it now stands: it stays (its walk ended there), so remember that too.
        self._last = ((state, (part, *state[1:])), prefill_batch, part)
        return part

    def plan_split(self, view: EngineView) -> Partition:
        """The split Nexus's cost model picks for the current queues (greedy, with hysteresis)."""
        gpu = view.gpu
        prefill, decode = self.pending_work(view)
        current = view.partition
        if prefill.is_empty and decode.is_empty:
            return current if current.is_split else gpu.split_with_decode(self._middle(view))
        options = gpu.decode_sm_options()
        evaluate = self._evaluator(view, prefill, decode)
        if not current.is_split:
            best = min((evaluate(d) for d in options), key=SplitScore.key)
            return gpu.split_with_decode(best.decode_sms)
        here = evaluate(current.decode_sms)
        if here.violation == 0.0 and here.objective == 0.0:
            return current  # nothing to minimise (no prefill to speed up) and nothing violated
        best = here
        for direction in (-1, 1):
            cand = here
            while True:
                d = self._neighbour(options, cand.decode_sms, direction)
                if d is None:
                    break
                nxt = evaluate(d)
                if nxt.key() >= cand.key():
                    break
                cand = nxt
            if cand.key() < best.key():
                best = cand
        if best is here or not self._worth_moving(here, best):
            return current
        return gpu.split_with_decode(best.decode_sms)

    def pending_work(self, view: EngineView) -> tuple[BatchShape, BatchShape]:
        """The prefill and decode batches each lane runs now or would run next."""
        p = self.params
        running = view.in_flight.get(Lane.PREFILL)
        if running is not None:
            prefill = running.shape()
        else:
            queue = [*view.prefilling, *self.order_waiting(view)]
            prefill = prefill_shape(queue, p.max_num_batched_tokens, p.max_num_seqs)
        running = view.in_flight.get(Lane.DECODE)
        decode = running.shape() if running is not None else decode_shape(view.decoding)
        return prefill, decode

    def _evaluator(self, view: EngineView, prefill: BatchShape, decode: BatchShape):
        p, model, n = self.params, view.model, view.gpu.num_sms
        decode_priority = view.kv.usage >= p.kv_threshold
        contention = ContentionModel(model, decode, prefill, self._roofs)
        prefill_all, decode_all = contention.prefill_all, contention.decode_all

        def evaluate(decode_sms: int) -> SplitScore:
            t_p, t_d = contention.latencies(decode_sms, n - decode_sms)
            if decode_priority:
                bound, constrained, objective = p.prefill_slack * prefill_all, t_p, t_d
            else:
                bound, constrained, objective = p.decode_slack * decode_all, t_d, t_p
            violation = max(0.0, constrained / bound - 1.0) if bound > 0 else 0.0
            return SplitScore(decode_sms, violation, objective, t_p, t_d)

        return evaluate

    def _neighbour(self, options: list[int], decode_sms: int, direction: int) -> int | None:
        """The nearest valid decode SM count at least ``sm_step`` away in ``direction``."""
        step = self.params.sm_step
        if direction > 0:
            return next((d for d in options if d >= decode_sms + step), None)
        return next((d for d in reversed(options) if d <= decode_sms - step), None)

    def _worth_moving(self, here: SplitScore, best: SplitScore) -> bool:
        if here.violation > 0.0:
            return best.violation < here.violation
        if best.violation > 0.0:
            return False
        return best.objective < here.objective * (1.0 - self.params.hysteresis)

    @staticmethod
    def _middle(view: EngineView) -> int:
        options = view.gpu.decode_sm_options()
        half = view.gpu.num_sms / 2
        return min(options, key=lambda d: (abs(d - half), d))


class RooflineCache:
    """The prefill batch's costs, which a planner asks for again and again (one latency model).

    The running prefill batch is weighed at every re-plan while it runs, so its rooflines on
    each SM count and its all-SM latency are worth keeping; decode shapes change with every
    step and are not kept. Bounded, as queued prompts change too.
    """

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self.model: LatencyModel | None = None
        self._roofs: dict[tuple[BatchShape, int], tuple[dict[str, tuple[float, float]], float]] = {}
        self._alone: dict[BatchShape, tuple[float, float, dict[str, float]]] = {}

    def bind(self, model: LatencyModel) -> RooflineCache:
        if model is not self.model:
            self.model = model
            self._roofs.clear()
            self._alone.clear()
        return self

    def roofline(self, shape: BatchShape, sms: int) -> tuple[dict[str, tuple[float, float]], float]:
        """(``op_roofline`` on ``sms``, its busy seconds at full bandwidth)."""
        key = (shape, sms)
        hit = self._roofs.get(key)
        if hit is None:
            if len(self._roofs) >= self.limit:
                self._roofs.clear()
            roof = self.model.op_roofline(shape, sms)
            hit = self._roofs[key] = (roof, _busy(roof))
        return hit

    def alone(self, shape: BatchShape) -> tuple[float, float, dict[str, float]]:
        """(latency on all SMs, its fixed overhead, HBM bytes per operator class)."""
        hit = self._alone.get(shape)
        if hit is None:
            if len(self._alone) >= self.limit:
                self._alone.clear()
            hit = self._alone[shape] = self.measure(self.model, shape)
        return hit

    @staticmethod
    def measure(model: LatencyModel, shape: BatchShape) -> tuple[float, float, dict[str, float]]:
        n = model.gpu.num_sms
        total = model.predict(shape, n)
        return total, total - _busy(model.op_roofline(shape, n)), model.op_bytes(shape)


class ContentionModel:
    """Nexus's phase latencies for one pair of batches: prefill alone, decode at ``B_eff``."""

    def __init__(
        self,
        model: LatencyModel,
        decode: BatchShape,
        prefill: BatchShape,
        cache: RooflineCache | None = None,
    ) -> None:
        self.model, self.decode, self.prefill = model, decode, prefill
        self.cache = cache = (cache or RooflineCache()).bind(model)
        # Only the prefill side recurs (the running batch, re-planned against until it ends).
        self.prefill_all, self.prefill_overhead, p_bytes = cache.alone(prefill)
        self.decode_all, self.decode_overhead, d_bytes = RooflineCache.measure(model, decode)
        self.decode_bytes = sum(d_bytes.values())
        self.prefill_attn_bytes = p_bytes["attn_prefill"]
        self.prefill_dense_bytes = sum(p_bytes.values()) - self.prefill_attn_bytes

    def latencies(self, decode_sms: int, prefill_sms: int) -> tuple[float, float]:
        """(prefill seconds on its SMs, decode seconds on its SMs beside that prefill)."""
        if self.prefill.is_empty:
            return 0.0, self.model.predict(self.decode, decode_sms)
        p_roof, p_busy = self.cache.roofline(self.prefill, prefill_sms)
        t_p = p_busy + self.prefill_overhead
        if self.decode.is_empty:
            return t_p, 0.0
        d_roof = self.model.op_roofline(self.decode, decode_sms)
        d_busy = _busy(d_roof)
        d_rate = self.decode_bytes / d_busy
        t_attn = max(p_roof["attn_prefill"])
        t_dense = p_busy - t_attn
        p_attn = t_attn / (t_attn + t_dense)
        bw = self.model.hbm_bandwidth
        t_d = self.decode_overhead
        for weight, seconds, nbytes in (
            (p_attn, t_attn, self.prefill_attn_bytes),
            (1.0 - p_attn, t_dense, self.prefill_dense_bytes),
        ):
            if weight > 0.0:
                share = min(1.0, bw / (d_rate + nbytes / seconds))
                t_d += weight * (d_busy if share >= 1.0 else _busy(d_roof, share))
        return t_p, t_d


def _busy(roofline: dict[str, tuple[float, float]], share: float = 1.0) -> float:
    total = 0.0
    for compute, memory in roofline.values():
        memory /= share
        total += compute if compute > memory else memory
    return total
