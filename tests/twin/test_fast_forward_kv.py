"""How far a steady decode run may go before the KV cache fills (``kv_steps``)."""

from __future__ import annotations

import random

from policies import KVCache, Request
from twin.sim.fast_forward import kv_limit, kv_steps


def _fits(kv: KVCache, reqs: list[Request], steps: int) -> bool:
    need = sum(kv.extra_blocks(r.id, r.kv_tokens + steps) for r in reqs)
    return need <= kv.free_blocks


def test_kv_steps_is_the_longest_run_that_fits() -> None:
    rng = random.Random(7)
    for trial in range(200):
        kv = KVCache(num_blocks=rng.randint(8, 120), block_size=rng.choice((1, 4, 16)))
        reqs = []
        for i in range(rng.randint(1, 12)):
            tokens = rng.randint(1, 40)
            if kv.extra_blocks(i, tokens) > kv.free_blocks:
                break
            kv.grow(i, tokens)
            reqs.append(Request(i, 0.0, tokens, 1000, kv_tokens=tokens))
        if not reqs:
            continue
        limit = rng.randint(1, 300)
        got = kv_steps(kv, reqs, limit)
        assert 0 <= got <= limit, trial
        assert got == 0 or _fits(kv, reqs, got), trial
        assert got == limit or not _fits(kv, reqs, got + 1), trial


def _capped_blocks(m: int, bs: int, slack: list[int], caps: list[int]) -> int:
    """New blocks for ``m`` steps, request by request: each grows until its cap."""
    total = 0
    for s, c in zip(slack, caps, strict=True):
        grown = min(m, c)
        if grown > s:
            total += -(-(grown - s) // bs)
    return total


def test_kv_limit_with_caps_is_the_longest_run_that_fits() -> None:
    # Requests that finish inside a run (a cap: the steps they still decode) stop growing
    # there; a negative slack is a block owed for the first step.
    rng = random.Random(11)
    for trial in range(500):
        bs = rng.choice((1, 4, 16))
        n = rng.randint(1, 10)
        slack = [rng.randint(-1, bs - 1) for _ in range(n)]
        caps = [rng.randint(0, 80) for _ in range(n)]
        limit = rng.randint(1, 100)
        floor = _capped_blocks(0, bs, slack, caps)
        free = rng.randint(floor, floor + 30)
        got = kv_limit(free, bs, slack, limit, caps)
        assert 0 <= got <= limit, trial
        assert _capped_blocks(got, bs, slack, caps) <= free, trial
        assert got == limit or _capped_blocks(got + 1, bs, slack, caps) > free, trial
