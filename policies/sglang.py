"""SGLang's default scheduler: prefill-prioritised monolithic batching.

Source: SGLang (arXiv 2312.07104) and its scheduler (python/sglang/srt/managers/scheduler.py,
schedule_policy.py). Every iteration first tries to build a prefill batch: the prompt being
chunked continues, then waiting requests are admitted in queue order while the KV cache can
hold their prompt plus a reserve for the tokens the running requests will still generate
(``new_token_ratio`` of their remaining output). If any prefill work fits, the iteration runs
prefill only and the running decodes wait; otherwise it runs one decode step of every running
request, retracting (recompute-preempting) when KV runs out the request with the fewest
generated tokens (the longest prompt among equals), as SGLang's ``retract_decode`` does.

Simplifies: ``new_token_ratio`` is held at SGLang's floor (it decays there after ~600 decode
steps without a retraction) instead of decaying and jumping back after retractions; the
remaining output stands in for ``max_new_tokens`` (benchmarks set it to the output length);
no radix prefix cache (waiting order is FCFS, which is what longest-prefix-match reduces to
without shared prefixes); no mixed chunked batches (off by default in SGLang).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.base import SchedulingPolicy
from policies.batch import Batch, PrefillChunk
from policies.kvcache import KVBudget
from policies.numbers import check_fields
from policies.partition import Lane
from policies.registry import register
from policies.view import EngineView


@dataclass(frozen=True)
class SglangParams:
    chunked_prefill_size: int = 8192
    max_running_requests: int = 256
    new_token_ratio: float = 0.1

    def __post_init__(self) -> None:
        check_fields(self)
        if self.chunked_prefill_size < 1 or self.max_running_requests < 1:
            raise ValueError("chunked_prefill_size and max_running_requests must be at least 1")
        if not 0.0 <= self.new_token_ratio <= 1.0:
            raise ValueError("new_token_ratio must be between 0 and 1")


@register("sglang", SglangParams)
class SglangPolicy(SchedulingPolicy):
    params: SglangParams

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        prefill = self.prefill_batch(view)
        if prefill is not None:
            return prefill
        return self.decode_only_batch(view)

    def prefill_batch(self, view: EngineView) -> Batch | None:
        """A prefill-only batch if any prompt work fits, else None (then decode runs)."""
        p = self.params
        kv = view.kv.budget()
        budget = p.chunked_prefill_size
        chunks: list[PrefillChunk] = []
        for req in view.prefilling:  # the prompt being chunked; prefill never preempts
            length = min(req.remaining_prefill, budget)
            if budget <= 0 or not kv.try_grow(req.id, req.kv_tokens + length):
                break
            chunks.append(PrefillChunk(req, req.kv_tokens, length))
            budget -= length
        reserve = self._decode_reserve_tokens(view)
        free_seqs = p.max_running_requests - len(view.running)
        chunks += self._admit(view, budget, kv, free_seqs, reserve)
        if not chunks:
            return None
        return Batch(prefill=chunks)

    def pick_victim(self, candidates):
        """Retract the request with the fewest generated tokens, the longest prompt first."""
        return min(candidates, key=lambda r: (r.generated, -r.prompt_tokens))

    def _decode_reserve_tokens(self, view: EngineView) -> float:
        return self.params.new_token_ratio * sum(r.remaining_output for r in view.running)

    def _admit(
        self, view: EngineView, budget: int, kv: KVBudget, free_seqs: int, reserve: float
    ) -> list[PrefillChunk]:
        """Admit in queue order while prompt chunk plus everyone's decode reserve fit in KV."""
        chunks: list[PrefillChunk] = []
        block = view.kv.block_size
        ratio = self.params.new_token_ratio
        for req in self.order_waiting(view):
            if budget <= 0 or free_seqs <= 0:
                break
            length = min(req.remaining_prefill, budget)
            own_reserve = ratio * req.remaining_output
            need = kv.need(req.id, req.kv_tokens + length)
            reserve_blocks = math.ceil((reserve + own_reserve) / block)
            # The reserve keeps running requests from being retracted; an engine holding no
            # other request admits whatever fits, or a request the KV holds would wait forever.
            alone = not view.running and not chunks
            reserve_fits = alone or need + reserve_blocks <= kv.free
            if not reserve_fits or not kv.try_grow(req.id, req.kv_tokens + length):
                break
            reserve += own_reserve
            chunks.append(PrefillChunk(req, req.kv_tokens, length))
            budget -= length
            free_seqs -= 1
        return chunks
