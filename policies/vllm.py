"""vLLM v1 continuous batching with chunked prefill and automatic prefix caching, as served.

Source: vLLM v1 scheduler (vllm/v1/core/sched/scheduler.py), KV cache manager
(vllm/v1/core/kv_cache_manager.py) and defaults (vllm/engine/arg_utils.py,
``EngineArgs.get_batch_defaults``), v0.11; Sarathi-Serve (OSDI 2024) for the token budget.
Each step spends a token budget: every running decode first, then the next chunks of
partially prefilled prompts, then new requests from the FCFS queue, until the budget, the
sequence limit or the KV cache runs out. A new request reuses the longest cached prefix of
full blocks and prefills only the rest (``enable_prefix_caching``, on by default in v1).
When KV runs out for a running request the last admitted one is preempted (its blocks are
freed, stay cached until evicted, and it is recomputed later); a step that preempted admits
no one.

Defaults are the OpenAI server's (``vllm serve``) on a GPU with at least 70 GiB that is not
an A100: ``max_num_batched_tokens`` 8192 and ``max_num_seqs`` 1024 (the offline ``LLM`` class
uses 16384 tokens; smaller GPUs and A100 get 2048 tokens and 256 sequences: pass them with
``--policy-arg``); twin's GPUs (H100, H200) are in the first class.

``watermark`` is the share of KV blocks an admission must leave free when the step already runs
other requests (the v0 block manager's ``watermark``, 0.01; the v1 KV cache manager applies its
admission watermark to waiting and preempted requests only when something else is scheduled).

Simplifies: no priority classes, no speculative decoding, no async scheduling.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import SchedulingPolicy
from policies.batch import ArrivalAdmission, Batch, chunk_completes
from policies.kvcache import KVBudget
from policies.numbers import check_fields
from policies.partition import Lane
from policies.registry import register
from policies.view import EngineView


@dataclass(frozen=True)
class VllmParams:
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    enable_prefix_caching: bool = True
    watermark: float = 0.01

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be at least 1")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")


@register("vllm", VllmParams)
class VllmPolicy(SchedulingPolicy):
    params: VllmParams

    # Policies built on this one (DuetServe) may have parameters without these knobs: for
    # them caching is off and there is no watermark, as before either existed here.
    @property
    def prefix_caching(self) -> bool:
        return getattr(self.params, "enable_prefix_caching", False)

    def admission_reserve(self, kv: KVBudget, scheduled: bool) -> int:
        watermark = getattr(self.params, "watermark", 0.0)
        return int(watermark * kv.cache.num_blocks) if scheduled and watermark else 0

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        p = self.params
        kv = view.kv.budget()
        preempted: list = []
        prefilling, decoding = view.phases()  # policies never change a request's phase
        budget = p.max_num_batched_tokens
        if not prefilling and self.plans_decodes_plainly() and kv.grant_decodes(decoding):
            # What ``plan_decodes`` decides when the blocks of every decode fit: all of them
            # (a view lists each running request once). No prompt is left to continue, so
            # the ids it would record as scheduled have no reader.
            decodes, chunks = decoding, []
            budget -= len(decodes)
        else:
            scheduled: set[int] = set()
            decodes = self.plan_decodes(view, decoding, kv, preempted, scheduled)
            budget -= len(decodes)
            chunks = self.continue_prefills(view, prefilling, budget, kv, preempted, scheduled)
            budget -= sum(c.length for c in chunks)
        admitted: list = []
        if not preempted:  # then every request planned is in the batch
            free_seqs = p.max_num_seqs - len(view.running)
            busy = bool(decodes or chunks)
            admitted = self.admit_waiting(self.order_waiting(view), budget, kv, free_seqs, busy)
        if preempted:  # a later preemption may take a request granted a decode step
            decodes = [r for r in decodes if r not in preempted]
        batch = Batch(prefill=chunks + admitted, decode=decodes, preempt=preempted)
        if batch.is_empty and not preempted:
            return None
        if batch.prefill and not preempted and len(decodes) == len(decoding):
            if len(chunks) == len(prefilling):
                batch.then = self.decoding_after(view, batch, admitted, budget, kv)
            return batch
        batch = self.steady(batch, view)
        if batch.steady_steps > 1 and not batch.prefill:
            batch.admits_arrivals = self.arrival_admission(kv)
        return batch

    def decoding_after(
        self, view: EngineView, batch: Batch, admitted: list, budget: int, kv: KVBudget
    ) -> Batch | None:
        """The steady decode batch this policy would return after ``batch``, which runs every
        request (each decoding one, each prefilling one's chunk) if every chunk ends its
        prompt: or None when the next step could differ (a prompt left to prefill, or a
        waiting request the next step could admit)."""
        if not all(map(chunk_completes, batch.prefill)) or not self.keeps_partition():
            return None
        p = self.params
        n = len(view.running) + len(admitted)
        queued = len(view.waiting) > len(admitted)
        if queued:
            # The queue's head is admitted at the next step unless something that does not
            # loosen while the batch decodes keeps it out: no token budget or no sequence
            # then, or too little KV now (the next step's budget is at least this step's
            # rest, so its chunk is no shorter, and decoding only takes blocks). A prefix
            # cached by this step's chunks could shorten its chunk, so a head with hashes
            # under prefix caching is asked again.
            spent = budget - sum(c.length for c in admitted) <= 0
            full = p.max_num_seqs - n <= 0
            if p.max_num_batched_tokens - n > 0 and not full:
                head = view.waiting[len(admitted)]
                cached = kv.cache.prefix_caching and bool(head.block_hashes)
                if spent or cached:
                    return None
        then = Batch(
            decode=list(view.running) + [c.request for c in admitted],
            arrivals_queue=queued,
            past_finishes=not queued,
        )
        then.steady_steps = self.steady_limit(view, then)
        then.admits_arrivals = self.arrival_admission(kv)
        return then

    def arrival_admission(self, kv: KVBudget) -> ArrivalAdmission | None:
        """How this policy's steps admit the queue while every running request decodes: the
        decodes first, then the FCFS queue under the token budget, a free sequence and the
        watermark (a step with decodes always counts as scheduled); None for policies built
        on this one that decide otherwise."""
        if not self.admits_arrivals_plainly():
            return None
        p = self.params
        return ArrivalAdmission(
            p.max_num_batched_tokens, p.max_num_seqs, self.admission_reserve(kv, True)
        )

    def admits_arrivals_plainly(self) -> bool:
        """Whether this policy decides a step after arrivals as ``ArrivalAdmission`` states:
        its own ``next_batch`` and promises over the base admission, queue, decode planning
        and steady limit (policies built on this one may change any of them)."""
        cls = type(self)
        return (
            cls.next_batch is VllmPolicy.next_batch
            and cls.decoding_after is VllmPolicy.decoding_after
            and cls.admission_reserve is VllmPolicy.admission_reserve
            and cls.admit_waiting is SchedulingPolicy.admit_waiting
            and cls.steady_limit is SchedulingPolicy.steady_limit
            and cls.steady is SchedulingPolicy.steady
            and cls.past_finishes is VllmPolicy.past_finishes
            and cls.arrivals_queue is VllmPolicy.arrivals_queue
            and self.plans_decodes_plainly()
            and self.keeps_partition()
        )

    def keeps_partition(self) -> bool:
        """Whether this policy's partition and queue order are the base ones: aggregated
        always, first come first served (what the promises through a queue rely on)."""
        cls = type(self)
        return (
            cls.partition is SchedulingPolicy.partition
            and cls.order_waiting is SchedulingPolicy.order_waiting
        )

    def past_finishes(self, view: EngineView, batch: Batch) -> bool:
        # Every running request decodes and nobody waits: when some finish, the next step
        # decodes the rest, with no one to admit and nothing to prefill.
        return (
            not view.waiting
            and len(batch.decode) == len(view.running)
            and not view.partition.is_split
            and self.keeps_partition()
        )

    def arrivals_queue(self, view: EngineView) -> bool:
        # A decode-only batch while requests wait means the queue's head was not admitted: no
        # token budget, no free sequence or too little KV. None of these loosens during a
        # steady run (the budget and the running count stay, free KV only shrinks and cached
        # prefixes are only evicted), and in first-come order an arrival waits behind the
        # head. Policies built on this one that re-split or reorder the queue say nothing.
        return bool(view.waiting) and not view.partition.is_split and self.keeps_partition()
