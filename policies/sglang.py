"""SGLang's default scheduler: prefill-prioritised batching over a radix prefix cache.

Source: SGLang (arXiv 2312.07104) and its scheduler, v0.5 (python/sglang/srt/managers/
scheduler.py, schedule_policy.py ``PrefillAdder``, schedule_batch.py ``retract_decode``,
server_args.py). Every iteration first tries to build a prefill batch: the prompt being chunked
continues, then waiting requests are admitted in queue order (``schedule_policy="fcfs"``),
each reusing its longest cached prefix, while the KV cache can hold

    its uncached prompt + min(its max new tokens, 4096)
    + new_token_ratio x sum over running requests of min(their remaining new tokens, 4096).

If any prefill work fits, the iteration runs prefill only and the running decodes wait;
otherwise it runs one decode step of every running request. ``new_token_ratio`` starts at
0.7, falls by (0.7 - 0.7 x 0.14) / 600 every decode step to 0.098, and after a retraction is
reset to (tokens decoded + 20 per remaining request) / their max new tokens. A decode step
that cannot give every request its next token retracts (recompute-preempts) requests, fewest
generated tokens first and the longest prompt among equals, until the rest have room for 20
more tokens each, as ``retract_decode`` does.

Defaults: ``chunked_prefill_size`` 8192 (SGLang's for GPUs of 60 to 160 GB, H100 and H200);
``max_running_requests=0`` takes SGLang's derivation from the KV pool, min(pool tokens / 2,
2048) (its request pool holds at least 2048; the context-length term is not modelled). The
radix cache (``enable_prefix_caching``, SGLang's ``--disable-radix-cache`` unset) is modelled
by the shared block cache at block granularity, with least-recently-used leaves evicted first.

Simplifies: the remaining output stands in for ``max_new_tokens`` (benchmarks set it to the
output length); no mixed chunked batches (off by default in SGLang); no priority scheduling;
cached blocks are shareable from the step that schedules them (SGLang inserts them after the
chunk runs).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

from policies.base import SchedulingPolicy
from policies.batch import UNTIL_CHANGE, Batch, PrefillChunk
from policies.kvcache import KVBudget
from policies.numbers import check_fields
from policies.partition import Lane
from policies.registry import register
from policies.request import Request
from policies.view import EngineView


@dataclass(frozen=True)
class SglangParams:
    chunked_prefill_size: int = 8192
    max_running_requests: int = 0  # 0: derived from the KV pool, as SGLang does
    enable_prefix_caching: bool = True
    init_new_token_ratio: float = 0.7
    min_new_token_ratio_factor: float = 0.14
    new_token_ratio_decay_steps: int = 600
    retract_decode_steps: int = 20
    clip_max_new_tokens: int = 4096

    def __post_init__(self) -> None:
        check_fields(self)
        if self.chunked_prefill_size < 1 or self.max_running_requests < 0:
            raise ValueError(
                "chunked_prefill_size must be at least 1 and max_running_requests >= 0"
            )
        for name in ("init_new_token_ratio", "min_new_token_ratio_factor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if min(self.new_token_ratio_decay_steps, self.retract_decode_steps) < 1:
            raise ValueError("new_token_ratio_decay_steps and retract_decode_steps must be >= 1")
        if self.clip_max_new_tokens < 1:
            raise ValueError("clip_max_new_tokens must be at least 1")

    @property
    def min_new_token_ratio(self) -> float:
        return self.init_new_token_ratio * self.min_new_token_ratio_factor

    @property
    def decay(self) -> float:
        return (self.init_new_token_ratio - self.min_new_token_ratio) / (
            self.new_token_ratio_decay_steps
        )


@register("sglang", SglangParams)
class SglangPolicy(SchedulingPolicy):
    params: SglangParams
    retracts = True  # SGLang calls its recompute preemptions retractions

    def __init__(self, params: SglangParams) -> None:
        super().__init__(params)
        # new_token_ratio is SGLang's one piece of scheduler state: it decays with every
        # decode step the engine runs (``view.decode_steps``) from its value at the anchor.
        self._anchor_steps = 0
        self._anchor_ratio = params.init_new_token_ratio

    @property
    def prefix_caching(self) -> bool:
        return self.params.enable_prefix_caching

    def new_token_ratio(self, view: EngineView) -> float:
        p = self.params
        decayed = self._anchor_ratio - p.decay * (view.decode_steps - self._anchor_steps)
        return max(decayed, p.min_new_token_ratio)

    def max_running(self, view: EngineView) -> int:
        return self.params.max_running_requests or min(view.kv.capacity_tokens // 2, 2048)

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        prefill = self.prefill_batch(view)
        if prefill is not None:
            return prefill
        return self.decode_batch(view)

    # ----------------------------------------------------------------- prefill
    def _clipped(self, req: Request) -> int:
        return min(req.remaining_output, self.params.clip_max_new_tokens)

    def prefill_batch(self, view: EngineView) -> Batch | None:
        """A prefill-only batch if any prompt work fits, else None (then decode runs)."""
        p = self.params
        kv = view.kv.budget()
        ratio = self.new_token_ratio(view)
        # Tokens left once every running request's expected output is set aside.
        room = kv.free * view.kv.block_size - ratio * sum(self._running_clipped(view))
        budget = p.chunked_prefill_size
        chunks: list[PrefillChunk] = []
        for req in view.prefilling:  # the prompt being chunked; prefill never preempts
            length = min(req.remaining_prefill, budget)
            if budget <= 0 or not kv.try_grow(req.id, req.kv_tokens + length):
                break
            completes = length == req.remaining_prefill
            chunks.append(PrefillChunk(req, req.kv_tokens, length))
            budget -= length
            room -= length + (self._clipped(req) if completes else 0)
        free_seqs = self.max_running(view) - len(view.running)
        chunks += self._admit(view, budget, kv, free_seqs, room)
        if not chunks:
            return None
        return Batch(prefill=chunks)

    def _admit(
        self, view: EngineView, budget: int, kv: KVBudget, free_seqs: int, room: float
    ) -> list[PrefillChunk]:
        """Admit in queue order while the prompt and its output reserve fit in ``room``."""
        chunks: list[PrefillChunk] = []
        for req in self.order_waiting(view):
            if budget <= 0 or free_seqs <= 0:
                break
            start = kv.prefix_hit(req)
            extend = req.prefill_target - start
            # The reserve keeps running requests from being retracted; an engine holding no
            # other request admits whatever fits, or a request the KV holds would wait forever.
            alone = not view.running and not chunks
            if not alone and extend + self._clipped(req) >= room:
                break
            length = min(extend, budget)
            if not kv.try_admit(req, start, start + length):
                break
            chunks.append(PrefillChunk(req, start, length))
            budget -= length
            free_seqs -= 1
            room -= length + (self._clipped(req) if length == extend else 0)
        return chunks

    # ----------------------------------------------------------------- decode
    def decode_batch(self, view: EngineView) -> Batch | None:
        """One decode step of every running request, retracting first if KV cannot hold it."""
        decoding = view.decoding
        if not decoding:
            return None
        kv = view.kv.budget()
        needs = kv.decode_needs(decoding)
        if sum(needs.values()) <= kv.free:  # no retraction: every request gets its block
            kv.grant(needs)
            return self.steady(Batch(decode=list(decoding)), view)
        retracted = self._retract(view, decoding, kv)
        keep = [r for r in decoding if r not in retracted]
        for r in keep:
            if not kv.try_grow(r.id, r.kv_tokens + 1):  # cannot happen after the retraction
                raise RuntimeError(f"sglang: request {r.id} has no KV after retraction")
        batch = Batch(decode=keep, preempt=retracted)
        if batch.is_empty and not retracted:
            return None
        return self.steady(batch, view)

    def _retract(self, view: EngineView, decoding: list[Request], kv: KVBudget) -> list[Request]:
        p = self.params
        order = sorted(decoding, key=lambda r: (r.generated, -r.prompt_tokens))
        keep = list(decoding)
        retracted: list[Request] = []
        steps = p.retract_decode_steps
        while keep and (
            not retracted or sum(kv.need(r.id, r.kv_tokens + steps) for r in keep) > kv.free
        ):
            victim = order.pop(0)
            keep.remove(victim)
            kv.release(victim.id)
            retracted.append(victim)
        decoded = sum(r.generated for r in keep)
        max_new = sum(r.output_tokens for r in keep)
        ratio = min(1.0, (decoded + steps * len(keep)) / max_new) if max_new else 1.0
        self._anchor_steps, self._anchor_ratio = view.decode_steps, ratio
        return retracted

    def pick_victim(self, candidates):
        """Retract the request with the fewest generated tokens, the longest prompt first."""
        return min(candidates, key=lambda r: (r.generated, -r.prompt_tokens))

    def steady_limit(self, view: EngineView, batch: Batch) -> int:
        """Decode steps before the head of the queue could possibly be admitted.

        Admission opens as the ratio decays and the running requests' remaining output
        shrinks, while free KV only shrinks during a decode-only run. So with ``k`` steps
        done the room is at most ``free - ratio_k * sum(max(0, clipped_i - k))``, and until
        that bound exceeds the head's demand (its uncached prompt plus its own clipped
        output) the decision cannot change.

        The room is non-decreasing in ``k`` even in floating point (every operation in it is
        a correctly rounded monotone step on non-negative numbers), so the first step that
        opens is found by bisection, with the same arithmetic per step as evaluating every step (the
        tests compare the two).
        """
        if not view.waiting:
            return UNTIL_CHANGE
        p = self.params
        head = view.waiting[0]
        # Its cached prefix can only shrink (evictions) while nothing new is prefilled.
        need = head.prefill_target - view.kv.budget().prefix_hit(head) + self._clipped(head)
        clipped = sorted(self._running_clipped(view))
        suffix = list(accumulate(reversed(clipped), initial=0))[::-1]  # sum of clipped[i:]
        horizon = (clipped[-1] if clipped else 0) + p.new_token_ratio_decay_steps + 1
        ratio0, decay, floor = self.new_token_ratio(view), p.decay, p.min_new_token_ratio
        free_tokens = view.kv.free_blocks * view.kv.block_size

        def opens(k: int) -> bool:
            ratio = max(ratio0 - decay * k, floor)
            i = bisect_right(clipped, k)  # the requests with more than k tokens left to clip
            left = suffix[i] - k * (len(clipped) - i)
            return free_tokens - ratio * left > need

        if not opens(horizon):
            return horizon
        lo, hi = 0, horizon  # opens(hi); opens(lo) false or lo == 0 (k starts at 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if opens(mid):
                hi = mid
            else:
                lo = mid
        return hi

    def _running_clipped(self, view: EngineView) -> list[int]:
        """``_clipped`` of every running request past its prefill, in running order."""
        clip = self.params.clip_max_new_tokens
        return [
            left if (left := r.output_tokens - r.generated) < clip else clip
            for r in view.running
            if r.kv_tokens >= r.prefill_target
        ]
