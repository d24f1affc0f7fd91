"""Nexus: proactive intra-GPU prefill/decode disaggregation with a contention-aware cost model.

Source: Nexus (arXiv 2507.06608), section 4 and its Algorithm 1. Prefill and decode run as two
lanes on disjoint SM partitions, always. Whenever a lane frees up the split is re-evaluated
with Nexus's cost model (``NexusCostModel``):

- each phase's latency is the sum of its operators' times on its SMs, which fall with
  diminishing returns (the latency model's SM curves);
- decode attention competes with prefill for HBM: with ``P_attn = T_prefill_attn /
  T_prefill`` the chance that a decode step overlaps prefill attention (otherwise it overlaps
  the dense layers), decode attention runs at
  ``B_eff = B * [P_attn * m_d/(m_d + m_p1) + (1 - P_attn) * m_d/(m_d + m_p2)]`` where the
  ``m`` are bytes moved (``m_d`` decode attention, ``m_p1`` prefill attention, ``m_p2`` the
  prefill's dense layers); only decode attention is slowed, the other decode operators keep
  their bandwidth (section 4, contention);
- the objective follows KV-cache usage: below ``kv_threshold`` (70%) prefill-priority, the
  fastest prefill with decode within ``decode_slack`` (1.1x) of ``CostModel(decode, 100%)``;
  above it decode-priority, the fastest decode with prefill within ``prefill_slack`` (1.3x)
  of ``CostModel(prefill, 100%)``. Bound and candidate come from the same cost model, the
  contention term included (Algorithm 1);
- the search starts from the current split, lowers the prioritised phase's share in 1% steps
  (``step_fraction``) until the constraint holds, then raises it while the constraint still
  holds; the new split is applied only when ``|R_new - R_cur| > hysteresis`` (δ, a fraction
  of the SMs) (Algorithm 1);
- the split is re-planned when what it weighs changes (an arrival while the prefill lane is
  free, an admission, finish or preemption, a new prefill batch, KV usage crossing the
  threshold), not at every decode step; an arrival behind a running prefill batch waits.

The prefill queue is every queued prompt, admitted (partly prefilled) or new, ordered
shortest-remaining-prompt-first with aging (score = remaining prompt tokens - ``aging`` *
seconds waited, γ = 15) (section 4); decode is FCFS; both lanes keep vLLM's token and
sequence limits.

Deviations, each for a reason:
- a 1% step is rounded up to the next split the GPU can make (``GpuSpec.decode_sm_options``):
  4 SMs on an H100 with 8-SM green-context groups, 2 SMs on Ada (L20) or with TPC masks;
- ``P_attn`` is read from the prefill batch on all SMs, so the byte share, and with it the
  contention factor, is one number per pair of batches: ``CostModel(decode, 100%)`` then
  carries the same contention as every candidate, as the bound must for "same cost model";
- δ's default here, 5% of the SMs, is a choice of this module, not a value taken from the paper;
- the work weighed is the next batch each lane would run (the running one if it is busy).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.base import SchedulingPolicy
from policies.batch import UNTIL_CHANGE, Batch, BatchShape, PrefillChunk
from policies.numbers import check_fields
from policies.partition import Lane, Partition
from policies.registry import PolicyError, register
from policies.request import Request
from policies.shapes import decode_shape, prefill_shape
from policies.view import EngineView, LatencyModel


@dataclass(frozen=True)
class NexusParams:
    kv_threshold: float = 0.7
    decode_slack: float = 1.1
    prefill_slack: float = 1.3
    hysteresis: float = 0.05  # δ: the smallest change of share (fraction of SMs) applied
    aging: float = 15.0
    step_fraction: float = 0.01  # the search step, a fraction of the SMs (1% in the paper)
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0.0 < self.kv_threshold <= 1.0:
            raise ValueError("kv_threshold must be in (0, 1]")
        if self.decode_slack < 1.0 or self.prefill_slack < 1.0:
            raise ValueError("decode_slack and prefill_slack must be at least 1")
        if not 0.0 <= self.hysteresis < 1.0 or self.aging < 0.0:
            raise ValueError("hysteresis must be in [0, 1) and aging must not be negative")
        if not 0.0 < self.step_fraction <= 0.5:
            raise ValueError("step_fraction must be in (0, 0.5]")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")


@dataclass(frozen=True, slots=True)
class SplitScore:
    """One candidate split under the current objective."""

    decode_sms: int
    holds: bool  # the constrained phase is within its bound
    prefill_s: float
    decode_s: float


@register("nexus", NexusParams)
class NexusPolicy(SchedulingPolicy):
    params: NexusParams
    split_ignores_arrivals = True  # plans from the running prefill batch while there is one

    def __init__(self, params: NexusParams) -> None:
        super().__init__(params)
        self._last: tuple[tuple[tuple, tuple], Batch | None, Partition] | None = None
        self._roofs = RooflineCache()

    # ----------------------------------------------------------------- queues and batches
    def order_waiting(self, view: EngineView) -> list[Request]:
        return self.prefill_queue(view, view.waiting)

    def prefill_queue(self, view: EngineView, requests: Sequence[Request]) -> list[Request]:
        """Shortest remaining prompt first, aged: score = remaining - γ * seconds waited."""
        gamma, now = self.params.aging, view.now
        return sorted(requests, key=lambda r: r.remaining_prefill - gamma * (now - r.arrival_s))

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        if lane is Lane.DECODE:
            return self.decode_only_batch(view)
        return self.prefill_batch(view)

    def prefill_batch(self, view: EngineView) -> Batch | None:
        """Chunks in the aged shortest-first order over every queued prompt (section 4).

        An admitted prompt's next chunk needs KV for it (preempting if it must); a new prompt
        also needs a free sequence slot, and once one does not fit no later new one is admitted
        (vLLM's rule), while admitted prompts further down the order may still continue.
        """
        p = self.params
        kv = view.kv.budget()
        preempted: list[Request] = []
        scheduled: set[int] = set()
        chunks: list[PrefillChunk] = []
        budget = p.max_num_batched_tokens
        free_seqs = p.max_num_seqs - len(view.running)
        admitting = True
        admitted = view.prefilling
        held = {r.id for r in admitted}
        for req in self.prefill_queue(view, [*admitted, *view.waiting]):
            if budget <= 0:
                break
            if req in preempted:
                continue
            length = min(req.remaining_prefill, budget)
            if req.id in held:
                total = req.kv_tokens + length
                if not self._fit_or_preempt(view, req, total, kv, preempted, scheduled):
                    continue
            else:
                if not admitting or preempted or free_seqs <= 0:
                    continue
                if not kv.try_grow(req.id, req.kv_tokens + length):
                    admitting = False
                    continue
                free_seqs -= 1
            chunks.append(PrefillChunk(req, req.kv_tokens, length))
            scheduled.add(req.id)
            budget -= length
        chunks = [c for c in chunks if c.request not in preempted]
        if not chunks and not preempted:
            return None
        return Batch(prefill=chunks, preempt=preempted)

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
        # Asked again once the engine has moved to ``part``, the search would start where it
        # ended (its constraint holds there and one step up does not): it stays, so remember.
        self._last = ((state, (part, *state[1:])), prefill_batch, part)
        return part

    def plan_split(self, view: EngineView) -> Partition:
        """Algorithm 1: lower the prioritised share until its constraint holds, then raise it."""
        gpu = view.gpu
        prefill, decode = self.pending_work(view)
        current = view.partition
        options = gpu.decode_sm_options()
        if not options:
            raise PolicyError(
                f"nexus splits the SMs, but {gpu.name} ({gpu.num_sms} SMs in groups of "
                f"{gpu.sm_granularity}) has no valid split; use a one-lane policy such as vllm"
            )
        if prefill.is_empty and decode.is_empty:
            if current.is_split:
                return current
            return gpu.split_with_decode(self._middle(options, gpu))
        decode_priority = view.kv.usage >= self.params.kv_threshold
        evaluate = self._evaluator(view, prefill, decode, decode_priority)
        # Index direction that raises the prioritised share: fewer decode SMs when prefill is
        # prioritised, more when decode is.
        up = 1 if decode_priority else -1
        start = current.decode_sms if current.is_split else self._middle(options, gpu)
        i = _nearest(options, start)
        step = max(1.0, self.params.step_fraction * gpu.num_sms)
        here = evaluate(options[i])
        while not here.holds:
            j = self._neighbour(options, i, -up, step)
            if j is None:
                break  # the constraint cannot hold: the constrained phase gets the most
            i, here = j, evaluate(options[j])
        while here.holds:
            j = self._neighbour(options, i, up, step)
            if j is None:
                break
            nxt = evaluate(options[j])
            if not nxt.holds:
                break
            i, here = j, nxt
        new = options[i]
        if current.is_split:
            if abs(new - current.decode_sms) <= self.params.hysteresis * gpu.num_sms:
                return current
        return gpu.split_with_decode(new)

    def pending_work(self, view: EngineView) -> tuple[BatchShape, BatchShape]:
        """The prefill and decode batches each lane runs now or would run next."""
        p = self.params
        running = view.in_flight.get(Lane.PREFILL)
        if running is not None:
            prefill = running.shape()
        else:
            queue = self.prefill_queue(view, [*view.prefilling, *view.waiting])
            prefill = prefill_shape(queue, p.max_num_batched_tokens, p.max_num_seqs)
        running = view.in_flight.get(Lane.DECODE)
        decode = running.shape() if running is not None else decode_shape(view.decoding)
        return prefill, decode

    def _evaluator(
        self, view: EngineView, prefill: BatchShape, decode: BatchShape, decode_priority: bool
    ):
        p, n = self.params, view.gpu.num_sms
        cost = NexusCostModel(view.model, decode, prefill, self._roofs)
        if decode_priority:
            bound = p.prefill_slack * cost.prefill_all
        else:
            bound = p.decode_slack * cost.decode_all

        def evaluate(decode_sms: int) -> SplitScore:
            t_p, t_d = cost.latencies(decode_sms, n - decode_sms)
            constrained = t_p if decode_priority else t_d
            return SplitScore(decode_sms, constrained <= bound * (1 + 1e-12), t_p, t_d)

        return evaluate

    @staticmethod
    def _neighbour(options: list[int], i: int, direction: int, step: float) -> int | None:
        """Index of the nearest option at least ``step`` SMs from ``options[i]`` that way."""
        j = i + direction
        while 0 <= j < len(options):
            if abs(options[j] - options[i]) >= step - 1e-9:
                return j
            j += direction
        return None

    @staticmethod
    def _middle(options: list[int], gpu) -> int:
        half = gpu.num_sms / 2
        return min(options, key=lambda d: (abs(d - half), d))


class RooflineCache:
    """The prefill batch's costs, which a planner asks for again and again (one latency model).

    The running prefill batch is weighed at every re-plan while it runs, so its rooflines on
    each SM count and its all-SM latency are worth keeping; a decode batch's all-SM costs
    are kept apart, as they recur only while one decode batch runs. Bounded, as queued
    prompts change too.
    """

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self.model: LatencyModel | None = None
        self._roofs: dict[tuple[BatchShape, int], tuple[dict[str, tuple[float, float]], float]] = {}
        self._alone: dict[BatchShape, tuple[float, float, dict[str, float], float]] = {}
        self._decode_alone: dict[BatchShape, tuple[float, float, dict[str, float], float]] = {}

    def bind(self, model: LatencyModel) -> RooflineCache:
        if model is not self.model:
            self.model = model
            self._roofs.clear()
            self._alone.clear()
            self._decode_alone.clear()
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

    def alone(
        self, shape: BatchShape, decode: bool = False
    ) -> tuple[float, float, dict[str, float], float]:
        """(latency on all SMs, fixed overhead, HBM bytes per operator class, P_attn).

        Decode shapes are kept apart: a steady decode batch is weighed again at each re-plan
        while it runs, but decode shapes churn far faster than prefill ones."""
        cache = self._decode_alone if decode else self._alone
        hit = cache.get(shape)
        if hit is None:
            if len(cache) >= self.limit:
                cache.clear()
            hit = cache[shape] = self.measure(self.model, shape)
        return hit

    @staticmethod
    def measure(
        model: LatencyModel, shape: BatchShape
    ) -> tuple[float, float, dict[str, float], float]:
        n = model.gpu.num_sms
        total = model.predict(shape, n)
        roof = model.op_roofline(shape, n)
        busy = _busy(roof)
        attn = max(roof["attn_prefill"])
        return total, total - busy, model.op_bytes(shape), attn / busy if busy > 0 else 0.0


class NexusCostModel:
    """Nexus's phase latencies for one pair of batches: prefill alone, decode attention at B_eff.

    ``share`` is decode attention's fraction of the bandwidth beside this prefill, from bytes
    (section 4): ``P_attn m_d/(m_d + m_p1) + (1 - P_attn) m_d/(m_d + m_p2)``. ``decode_all``
    and ``prefill_all`` are ``CostModel(phase, 100%)``, the bounds' reference, with that share.
    """

    def __init__(
        self,
        model: LatencyModel,
        decode: BatchShape,
        prefill: BatchShape,
        cache: RooflineCache | None = None,
    ) -> None:
        self.model, self.decode, self.prefill = model, decode, prefill
        self.cache = cache = (cache or RooflineCache()).bind(model)
        n = model.gpu.num_sms
        # Only the prefill side recurs (the running batch, re-planned against until it ends).
        self.prefill_all, self.prefill_overhead, p_bytes, self.p_attn = cache.alone(prefill)
        d_total, self.decode_overhead, d_bytes, _ = cache.alone(decode, decode=True)
        m_d = d_bytes["attn_decode"]
        m_p1 = p_bytes["attn_prefill"]
        m_p2 = sum(p_bytes.values()) - m_p1
        self.share = 1.0
        if not prefill.is_empty and m_d > 0.0:
            self.share = self.p_attn * _fraction(m_d, m_p1) + (1 - self.p_attn) * _fraction(
                m_d, m_p2
            )
        self.decode_all = self.decode_time(n) if not prefill.is_empty else d_total

    def decode_time(self, decode_sms: int) -> float:
        """Decode on ``decode_sms`` with only its attention slowed to ``share`` of bandwidth."""
        if self.decode.is_empty:
            return 0.0
        total = self.decode_overhead
        for op, (compute, memory) in self.model.op_roofline(self.decode, decode_sms).items():
            if op == "attn_decode":
                memory /= self.share
            total += compute if compute > memory else memory
        return total

    def latencies(self, decode_sms: int, prefill_sms: int) -> tuple[float, float]:
        """(prefill seconds on its SMs, decode seconds on its SMs beside that prefill)."""
        if self.prefill.is_empty:
            return 0.0, self.model.predict(self.decode, decode_sms)
        _, p_busy = self.cache.roofline(self.prefill, prefill_sms)
        return p_busy + self.prefill_overhead, self.decode_time(decode_sms)


def _nearest(options: list[int], value: float) -> int:
    """Index of the ascending ``options`` nearest ``value``, the smaller on a tie."""
    k = bisect.bisect_left(options, value)
    if k == 0:
        return 0
    if k == len(options) or value - options[k - 1] <= options[k] - value:
        return k - 1
    return k


def _fraction(mine: float, other: float) -> float:
    return mine / (mine + other) if mine + other > 0 else 1.0


def _busy(roofline: dict[str, tuple[float, float]]) -> float:
    total = 0.0
    for compute, memory in roofline.values():
        total += compute if compute > memory else memory
    return total
