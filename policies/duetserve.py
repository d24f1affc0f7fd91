"""DuetServe: aggregated by default, SM multiplexing only when the TBT SLO is at risk.

Source: DuetServe (arXiv 2511.04791), sections 3-4. Each step the attention-aware roofline
predicts the next mixed batch (vLLM's decode-first chunked batch on all SMs). If it meets the
TBT SLO the step runs aggregated. If not, the work is split into a prefill-only and a
decode-only batch on two SM partitions, with decode's SM count ``S_d`` chosen to maximise

    (k * decode_tokens + prefill_tokens) / max(k * t_d(S_d), t_p(S - S_d))
    subject to t_d(S_d) <= TBT SLO,

where ``k`` decode steps overlap one prefill batch; the optimiser picks ``k`` together with
the split, the maximum over ``(S_p, S_d, k)`` (section 4), with ``k`` from 1 to
``max_lookahead`` (``lookahead`` > 0 pins it instead). When no split meets the
SLO (decode alone is too slow even on most SMs) the step stays aggregated, the split could
not help. ``tbt_target_s`` lets a search aim the split at a tighter (or looser) TBT than the
SLO the run is scored on.

SM options: DuetServe masks SMs per TPC (2 SMs). The candidates here are the splits the
GPU's description allows (``GpuSpec.decode_sm_options``): an H100 described with 2-SM
granularity gets DuetServe's TPC options; the bundled H100 keeps 8-SM groups because the
twin's runtime partitions with green contexts, which on Hopper split in groups of 8 SMs, and
a simulated split the runtime cannot make would not be a prediction of it.

Simplifies: the roofline is the twin's latency model on the candidate SM counts (with no
cross-partition contention term, as in the paper); ``k`` ranges up to ``max_lookahead``
(8 by default; the range is not a number the text gives); the decode lane runs free instead
of exactly ``k`` steps per prefill batch; the prediction skips the KV check.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

from policies.batch import Batch, BatchShape
from policies.numbers import check_fields
from policies.partition import Lane, Partition
from policies.registry import register
from policies.shapes import decode_shape, merge, prefill_shape
from policies.view import EngineView
from policies.vllm import VllmPolicy


@dataclass(frozen=True)
class DuetServeParams:
    lookahead: int = 0  # 0: chosen with the split (the paper); > 0: this fixed k
    max_lookahead: int = 8
    tbt_target_s: float = 0.0  # the TBT the split must meet; 0 means the run's TBT SLO
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        check_fields(self)
        if self.lookahead < 0:
            raise ValueError("lookahead must be >= 0 (0: chosen with the split)")
        if self.max_lookahead < 1 or self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_lookahead, max_num_batched_tokens and max_num_seqs must be >= 1")
        if self.tbt_target_s < 0:
            raise ValueError("tbt_target_s must not be negative")

    def target(self, slo_tbt_s: float) -> float:
        return self.tbt_target_s or slo_tbt_s

    def lookaheads(self) -> range:
        return (
            range(self.lookahead, self.lookahead + 1)
            if self.lookahead
            else range(1, self.max_lookahead + 1)
        )


@dataclass(frozen=True, slots=True)
class SplitChoice:
    decode_sms: int
    lookahead: int
    throughput: float  # tokens per second of the look-ahead objective
    decode_s: float
    prefill_s: float


@register("duetserve", DuetServeParams)
class DuetServePolicy(VllmPolicy):
    params: DuetServeParams

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        if lane is Lane.MIXED:
            return super().next_batch(view, lane)
        return self.split_lane_batch(view, lane)

    def partition(self, view: EngineView) -> Partition:
        prefill, decode = self.pending_work(view)
        if prefill.is_empty or decode.is_empty:
            return view.gpu.aggregated()
        mixed = view.model.predict(merge(prefill, decode), view.gpu.num_sms)
        if mixed <= self.params.target(view.slo.tbt_s):
            return view.gpu.aggregated()
        choice = self.best_split(view, prefill, decode)
        if choice is None:
            return view.gpu.aggregated()
        return view.gpu.split_with_decode(choice.decode_sms)

    def pending_work(self, view: EngineView) -> tuple[BatchShape, BatchShape]:
        """The decode and prefill work of the next step: every decoding request, then prompts.

        Requests a lane is running count too: the decision is about the whole next step.
        """
        p = self.params
        running = view.running
        decoding = [r for r in running if r.kv_tokens >= r.prefill_target]
        prefilling = (
            [] if len(decoding) == len(running)  # all decode: none can be prefilling
            else [r for r in running if r.kv_tokens < r.prefill_target]
        )
        decode = decode_shape(decoding)
        budget = p.max_num_batched_tokens - decode.n_decode
        seqs = max(0, p.max_num_seqs - len(decoding))
        # Chained, not copied: the queue can be long and the budget takes only its head.
        prefill = prefill_shape(chain(prefilling, view.waiting), budget, seqs)
        return prefill, decode

    def best_split(
        self, view: EngineView, prefill: BatchShape, decode: BatchShape
    ) -> SplitChoice | None:
        """The (decode SMs, k) with the best look-ahead throughput whose decode meets the SLO."""
        model, n = view.model, view.gpu.num_sms
        target = self.params.target(view.slo.tbt_s)
        ks = self.params.lookaheads()
        best: SplitChoice | None = None
        for decode_sms in view.gpu.decode_sm_options():
            t_d = model.predict(decode, decode_sms)
            if t_d > target:
                continue
            t_p = model.predict(prefill, n - decode_sms)
            for k in ks:
                rate = (k * decode.n_decode + prefill.prefill_tokens) / max(k * t_d, t_p)
                if best is None or rate > best.throughput:
                    best = SplitChoice(decode_sms, k, rate, t_d, t_p)
        return best
