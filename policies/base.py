"""Scheduling building blocks every policy shares, each choice a hook a policy can override.

The hooks keep the decisions apart: ``order_waiting`` (queue order), ``pick_victim``
(preemption), ``plan_decodes`` / ``plan_prefills`` (admission under the token and KV budgets)
and ``partition`` (the SM split). A policy is pure: it reads the view and returns a Batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import attrgetter

from policies.batch import UNTIL_CHANGE, Batch, PrefillChunk
from policies.kvcache import KVBudget
from policies.partition import Lane, Partition
from policies.request import Request
from policies.view import EngineView

_request_id = attrgetter("id")


class SchedulingPolicy:
    """Base for policies: FCFS queue, newest-first preemption, aggregated partition."""

    name = "base"
    # True when the partition cannot change on an arrival while the prefill lane of a split is
    # busy (the policy plans from the running prefill batch, not the queue behind it).
    split_ignores_arrivals = False

    def __init__(self, params: object) -> None:
        self.params = params

    def partition(self, view: EngineView) -> Partition:
        """Aggregated always: the partition in force when it already is (an engine asks at
        every decision, and a partition is a value), else a new one."""
        now = view.partition
        if now.mixed_sms == view.gpu.num_sms and not now.prefill_sms and not now.decode_sms:
            return now
        return view.gpu.aggregated()

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        raise NotImplementedError

    def order_waiting(self, view: EngineView) -> Iterable[Request]:
        return view.waiting

    def pick_victim(self, candidates: Sequence[Request]) -> Request:
        """Recompute-preempt the most recently admitted request, as vLLM does."""
        return candidates[-1]

    def plan_decodes(
        self,
        view: EngineView,
        requests: Sequence[Request],
        kv: KVBudget,
        preempted: list[Request],
        scheduled: set[int],
    ) -> list[Request]:
        """One decode step for each request in order, preempting when KV runs out.

        Each request's need is counted once up front: only its own turn changes it (a grant,
        or its preemption, after which it is skipped). A request needing no block is granted
        without asking the budget, and when the blocks of the whole set fit the free pool no
        request can be preempted, so all are granted at once. Otherwise the walk below goes
        request by request, preempting in the policy's order: the same decisions as
        ``plan_decodes_reference``, which walks every request through ``_fit_or_preempt``.
        """
        needs = kv.decode_needs(requests)
        if not scheduled and not preempted and sum(needs.values()) <= kv.free:
            scheduled.update(map(_request_id, requests))
            if len(scheduled) == len(requests):  # no request twice: every one is granted
                kv.grant(needs)
                return list(requests)
            scheduled.clear()
        chosen: list[Request] = []
        need_of = needs.get
        for req in requests:
            if req.id in scheduled or (preempted and req in preempted):
                continue
            if not need_of(req.id) or self._fit_or_preempt(
                view, req, req.kv_tokens + 1, kv, preempted, scheduled
            ):
                chosen.append(req)
                scheduled.add(req.id)
        return chosen

    def plans_decodes_plainly(self) -> bool:
        """Whether this policy plans decodes with the base ``plan_decodes``, whose answer when
        the blocks of every decode fit (all of them, a view listing each request once) a
        caller may take from ``KVBudget.grant_decodes`` without building the scheduled ids."""
        return type(self).plan_decodes is SchedulingPolicy.plan_decodes

    def plan_decodes_reference(
        self,
        view: EngineView,
        requests: Sequence[Request],
        kv: KVBudget,
        preempted: list[Request],
        scheduled: set[int],
    ) -> list[Request]:
        """``plan_decodes`` the plain way, every request through ``_fit_or_preempt``: the
        definition the fast paths are tested against."""
        chosen: list[Request] = []
        for req in requests:
            if req.id in scheduled or req in preempted:
                continue
            if self._fit_or_preempt(view, req, req.kv_tokens + 1, kv, preempted, scheduled):
                chosen.append(req)
                scheduled.add(req.id)
        return chosen

    def continue_prefills(
        self,
        view: EngineView,
        requests: Sequence[Request],
        token_budget: int,
        kv: KVBudget,
        preempted: list[Request],
        scheduled: set[int],
    ) -> list[PrefillChunk]:
        """Next chunks of prompts already admitted (they hold KV), preempting when KV runs out."""
        chunks: list[PrefillChunk] = []
        for req in requests:
            if token_budget <= 0:
                break
            if req.id in scheduled or req in preempted:
                continue
            length = min(req.remaining_prefill, token_budget)
            if self._fit_or_preempt(view, req, req.kv_tokens + length, kv, preempted, scheduled):
                chunks.append(PrefillChunk(req, req.kv_tokens, length))
                scheduled.add(req.id)
                token_budget -= length
        return chunks

    def admit_waiting(
        self,
        candidates: Iterable[Request],
        token_budget: int,
        kv: KVBudget,
        free_seqs: int,
        scheduled: bool = False,
    ) -> list[PrefillChunk]:
        """First chunks of waiting requests in queue order; stops at the first that does not fit.

        A request whose leading blocks are cached starts its chunk after them (prefix caching).
        ``scheduled`` says whether this step already runs other requests.
        """
        chunks: list[PrefillChunk] = []
        for req in candidates:
            if token_budget <= 0 or free_seqs <= 0:
                break
            start = kv.prefix_hit(req)
            length = min(req.prefill_target - start, token_budget)
            reserve = self.admission_reserve(kv, bool(chunks) or scheduled)
            if not kv.try_admit(req, start, start + length, reserve):
                break
            chunks.append(PrefillChunk(req, start, length))
            token_budget -= length
            free_seqs -= 1
        return chunks

    def admission_reserve(self, kv: KVBudget, scheduled: bool) -> int:
        """Free blocks a new admission must leave (vLLM's watermark); none by default."""
        return 0

    def _fit_or_preempt(
        self,
        view: EngineView,
        req: Request,
        total_tokens: int,
        kv: KVBudget,
        preempted: list[Request],
        scheduled: set[int],
    ) -> bool:
        while not kv.try_grow(req.id, total_tokens):
            pool = [
                r
                for r in view.running
                if not r.in_flight and r.id not in scheduled and r is not req and r not in preempted
            ]
            victim = self.pick_victim(pool) if pool else req
            kv.release(victim.id)
            preempted.append(victim)
            if victim is req:
                return False
        return True

    def decode_only_batch(self, view: EngineView) -> Batch | None:
        """One decode step of every decoding request, in order, preempting when KV runs out."""
        kv = view.kv.budget()
        preempted: list[Request] = []
        decoding = view.decoding
        if self.plans_decodes_plainly() and kv.grant_decodes(decoding):
            decodes = decoding  # what plan_decodes decides when every block fits: all of them
        else:
            decodes = self.plan_decodes(view, decoding, kv, preempted, set())
        if preempted:
            decodes = [r for r in decodes if r not in preempted]
        batch = Batch(decode=decodes, preempt=preempted)
        if batch.is_empty and not preempted:
            return None
        return self.steady(batch, view)

    def prefill_only_batch(
        self, view: EngineView, token_budget: int, max_num_seqs: int
    ) -> Batch | None:
        """Admitted prompts' next chunks, then new requests in queue order, under the budgets."""
        kv = view.kv.budget()
        preempted: list[Request] = []
        scheduled: set[int] = set()
        chunks = self.continue_prefills(
            view, view.prefilling, token_budget, kv, preempted, scheduled
        )
        token_budget -= sum(c.length for c in chunks)
        if not preempted:
            free_seqs = max_num_seqs - len(view.running)
            chunks += self.admit_waiting(self.order_waiting(view), token_budget, kv, free_seqs)
        if not chunks and not preempted:
            return None
        return Batch(prefill=chunks, preempt=preempted)

    def split_lane_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        """The batch of a split lane: decode-only on DECODE, prefill-only on PREFILL.

        Uses the policy's ``max_num_batched_tokens`` and ``max_num_seqs`` parameters.
        """
        if lane is Lane.DECODE:
            return self.decode_only_batch(view)
        p = self.params
        return self.prefill_only_batch(view, p.max_num_batched_tokens, p.max_num_seqs)

    def steady(self, batch: Batch, view: EngineView) -> Batch:
        """Mark a decode-only batch without preemption as repeatable until something changes.

        Only while the policy keeps the current partition: if it would re-split now (the other
        lane just took new work, say), the next step must be decided afresh. When the engine
        has just asked ``partition`` about this same state (``view.partition_settled``), its
        answer was the current partition, and a pure policy would give it again.
        """
        if not batch.prefill and not batch.preempt and batch.decode:
            if view.partition_settled or self.partition(view) == view.partition:
                batch.steady_steps = self.steady_limit(view, batch)
                batch.through_arrivals = self.split_ignores_arrivals and view.partition.is_split
                batch.arrivals_queue = self.arrivals_queue(view)
                batch.past_finishes = self.past_finishes(view, batch)
        return batch

    def past_finishes(self, view: EngineView, batch: Batch) -> bool:
        """Whether the steady ``batch`` goes on alike as its requests finish (the batch of
        the rest is what this policy would return): never assumed by default."""
        return False

    def arrivals_queue(self, view: EngineView) -> bool:
        """Whether, during a steady decode batch, an arrival would only queue behind a head
        this policy cannot admit: never assumed by default."""
        return False

    def steady_limit(self, view: EngineView, batch: Batch) -> int:
        """How many steps the promise holds; policies whose choices change with KV use cap it."""
        return UNTIL_CHANGE
