"""How far a steady decode run may go before the KV cache fills (``kv_steps``)."""

from __future__ import annotations

import random

from policies import KVCache, Request
from twin.sim.fast_forward import kv_steps


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
