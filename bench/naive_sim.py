"""A naive LLM-serving simulator, for scale: one loop turn per forward pass, plain Python.

What a straightforward simulator costs per simulated request, measured in the same process
as twin (bench/sim_speed.py). It schedules the way vLLM v1 does with chunked prefill: every
running decode first, then the next chunks of partly prefilled prompts, then new requests in
arrival order, within ``max_num_batched_tokens`` and ``max_num_seqs``; KV is held in blocks of
``block_size`` tokens out of ``num_kv_blocks``, and when a running request cannot grow the one
admitted last is preempted and recomputed later. Each forward pass is timed by the same latency
model twin uses (``predict(BatchShape, sms)``).

Left out on purpose (twin has them): fast-forward of steady decode runs, prefix caching, the
admission watermark, per-token records, and everything policies other than vllm need. Its
results are close to twin's vllm runs but not equal; only its speed is the point.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from policies.batch import BatchShape


@dataclass(frozen=True)
class NaiveConfig:
    num_kv_blocks: int
    block_size: int = 16
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024

    def __post_init__(self) -> None:
        for name in ("num_kv_blocks", "block_size", "max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"NaiveConfig.{name} = {value!r}: give a positive integer")


@dataclass(slots=True)
class _Req:
    index: int
    arrival: float
    prompt: int
    output: int
    done_prompt: int = 0  # prompt tokens whose KV is written
    generated: int = 0
    blocks: int = 0
    first_token: float = math.nan
    finish: float = math.nan
    restarts: int = 0

    @property
    def kv_tokens(self) -> int:
        return self.done_prompt + max(0, self.generated - 1)


@dataclass
class NaiveResult:
    ttft_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    iterations: int = 0
    preemptions: int = 0
    rejected: int = 0
    end_s: float = 0.0


def simulate(arrival_s, prompt_tokens, output_tokens, model, cfg: NaiveConfig) -> NaiveResult:
    """Run the requests to completion; ``model.predict(shape, model.gpu.num_sms)`` times passes."""
    reqs = [
        _Req(i, float(a), int(p), max(1, int(o)))
        for i, (a, p, o) in enumerate(zip(arrival_s, prompt_tokens, output_tokens, strict=True))
    ]
    sms = model.gpu.num_sms
    bs = cfg.block_size
    free = cfg.num_kv_blocks
    waiting: deque[_Req] = deque()
    running: list[_Req] = []  # admission order; the last one is preempted first
    out = NaiveResult()
    now = 0.0
    nxt = 0
    while nxt < len(reqs) or waiting or running:
        while nxt < len(reqs) and reqs[nxt].arrival <= now:
            r = reqs[nxt]
            nxt += 1
            if -(-(r.prompt + r.output) // bs) > cfg.num_kv_blocks:
                out.rejected += 1  # could never fit, even alone
                continue
            waiting.append(r)
        if not waiting and not running:
            if nxt == len(reqs):
                break  # the last arrivals were rejected
            now = reqs[nxt].arrival
            continue
        budget = cfg.max_num_batched_tokens
        decodes: list[_Req] = []
        chunks: list[tuple[_Req, int]] = []
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            step = 1 if r.done_prompt == r.prompt else min(r.prompt - r.done_prompt, budget)
            need = -(-(r.kv_tokens + step) // bs) - r.blocks
            while need > free and running[-1] is not r:
                victim = running.pop()
                free += victim.blocks
                victim.blocks = victim.done_prompt = victim.generated = 0
                victim.restarts += 1
                out.preemptions += 1
                waiting.appendleft(victim)
                preempted = True
            if need > free:  # r itself is the last one: it waits for the others
                running.pop()
                free += r.blocks
                r.blocks = r.done_prompt = r.generated = 0
                r.restarts += 1
                out.preemptions += 1
                waiting.appendleft(r)
                preempted = True
                break
            free -= need
            r.blocks += need
            if r.done_prompt == r.prompt:
                decodes.append(r)
            else:
                chunks.append((r, step))
            budget -= step
            i += 1
        if not preempted:
            while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
                r = waiting[0]
                step = min(r.prompt, budget)
                need = -(-step // bs)
                if need > free:
                    break
                waiting.popleft()
                free -= need
                r.blocks = need
                running.append(r)
                chunks.append((r, step))
                budget -= step
        if not decodes and not chunks:
            if nxt == len(reqs):  # cannot happen: an empty engine admits any request that fits
                raise RuntimeError("naive simulator: requests wait but none can be scheduled")
            now = reqs[nxt].arrival
            continue
        shape = BatchShape(
            prefill_q=tuple(q for _, q in chunks),
            prefill_ctx=tuple(r.done_prompt for r, _ in chunks),
            n_decode=len(decodes),
            decode_ctx_sum=sum(r.kv_tokens + 1 for r in decodes),
            sampled=len(decodes) + sum(1 for r, q in chunks if r.done_prompt + q == r.prompt),
        )
        now += model.predict(shape, sms)
        out.iterations += 1
        finished: list[_Req] = []
        for r, q in chunks:
            r.done_prompt += q
            if r.done_prompt == r.prompt:
                r.generated = 1
                r.first_token = now
                if r.output == 1:
                    finished.append(r)
        for r in decodes:
            r.generated += 1
            if r.generated >= r.output:
                finished.append(r)
        for r in finished:
            r.finish = now
            free += r.blocks
            r.blocks = 0
            running.remove(r)
            out.ttft_s.append(r.first_token - r.arrival)
            out.e2e_s.append(r.finish - r.arrival)
    out.end_s = now
    return out
