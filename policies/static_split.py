"""A fixed split of the SMs between a prefill lane and a decode lane.

Source: the static baseline of semi-PD (arXiv 2504.19867) and the split mode of Nexus and
DuetServe with the split frozen. The prefill lane runs chunked prefill of the FCFS queue under
a token budget; the decode lane runs every request that has finished its prefill.

Simplifies: the split never changes; decode preempts the newest request when KV runs out.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import SchedulingPolicy
from policies.batch import Batch
from policies.partition import Lane, Partition
from policies.registry import PolicyError, register
from policies.view import EngineView


@dataclass(frozen=True)
class StaticSplitParams:
    decode_sms: int = 48
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        if self.decode_sms < 1:
            raise ValueError("decode_sms must be at least 1")


@register("static-split", StaticSplitParams)
class StaticSplitPolicy(SchedulingPolicy):
    params: StaticSplitParams

    def partition(self, view: EngineView) -> Partition:
        part = view.gpu.split_with_decode(self.params.decode_sms)
        if not view.gpu.is_valid(part):
            options = view.gpu.decode_sm_options()
            raise PolicyError(
                f"static-split decode_sms={self.params.decode_sms} is not a valid split on "
                f"{view.gpu.name}; pick one of {options}"
            )
        return part

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        kv = view.kv.budget()
        preempted: list = []
        scheduled: set[int] = set()
        if lane is Lane.DECODE:
            decodes = self.plan_decodes(view, view.decoding, kv, preempted, scheduled)
            batch = Batch(decode=[r for r in decodes if r not in preempted], preempt=preempted)
            return self.steady(batch) if not batch.is_empty or preempted else None
        return prefill_batch(
            self, view, kv, self.params.max_num_batched_tokens, self.params.max_num_seqs
        )


def prefill_batch(
    policy: SchedulingPolicy, view: EngineView, kv, token_budget: int, max_num_seqs: int
) -> Batch | None:
    """A prefill-only batch: admitted prompts' next chunks, then new requests in queue order."""
    preempted: list = []
    scheduled: set[int] = set()
    chunks = policy.continue_prefills(view, view.prefilling, token_budget, kv, preempted, scheduled)
    token_budget -= sum(c.length for c in chunks)
    if not preempted:
        free_seqs = max_num_seqs - len(view.running)
        chunks += policy.admit_waiting(policy.order_waiting(view), token_budget, kv, free_seqs)
    if not chunks and not preempted:
        return None
    return Batch(prefill=chunks, preempt=preempted)
