"""vLLM v1 / Sarathi-Serve style monolithic continuous batching with chunked prefill.

Source: vLLM v1 scheduler (vllm/v1/core/sched/scheduler.py) and Sarathi-Serve (OSDI 2024).
Each step spends a token budget: every running decode first, then the next chunks of
partially prefilled prompts, then new requests from the FCFS queue, until the budget, the
sequence limit or the KV cache runs out. When KV runs out for a running request the newest
admitted request is preempted and later recomputed.

Simplifies: no prefix caching, no watermark on admission, no priority classes, no
speculative decoding; every prefill chunk of a new request is admitted only if its KV fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import SchedulingPolicy
from policies.batch import Batch
from policies.numbers import check_fields
from policies.partition import Lane
from policies.registry import register
from policies.view import EngineView


@dataclass(frozen=True)
class VllmParams:
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be at least 1")


@register("vllm", VllmParams)
class VllmPolicy(SchedulingPolicy):
    params: VllmParams

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        p = self.params
        kv = view.kv.budget()
        preempted: list = []
        scheduled: set[int] = set()
        decodes = self.plan_decodes(view, view.decoding, kv, preempted, scheduled)
        budget = p.max_num_batched_tokens - len(decodes)
        chunks = self.continue_prefills(view, view.prefilling, budget, kv, preempted, scheduled)
        budget -= sum(c.length for c in chunks)
        if not preempted:
            free_seqs = p.max_num_seqs - len(view.running)
            chunks += self.admit_waiting(self.order_waiting(view), budget, kv, free_seqs)
        decodes = [r for r in decodes if r not in preempted]
        batch = Batch(prefill=chunks, decode=decodes, preempt=preempted)
        if batch.is_empty and not preempted:
            return None
        return self.steady(batch, view)
