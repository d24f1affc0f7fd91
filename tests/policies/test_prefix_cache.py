"""Prefix caching in the shared KV model: content addresses, refcounts, LRU eviction, hits."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import KVCache, KVExhausted, Request, Status
from policies.block_hash import attach_hashes, content_hashes, private_hashes
from policies.prefix_cache import PrefixKVCache, make_kv_cache

BS = 16


def req(rid, content, prompt=None, out=10, per_id=1):
    """A waiting request whose prompt is ``content`` (token ids, or block ids of ``per_id``)."""
    r = Request(rid, 0.0, prompt or len(content) * per_id, out)
    r.content, r.tokens_per_id = tuple(content), per_id
    attach_hashes(r, BS)
    return r


def run_prefill(kv, r, start=None):
    """What an engine does when it admits a waiting request and runs its whole prompt."""
    start = kv.budget().prefix_hit(r) if start is None else start
    kv.admit(r, start)
    kv.grow(r.id, r.prefill_target)
    kv.commit(r, r.prefill_target)
    r.kv_tokens = r.prefill_target
    r.status = Status.RUNNING
    return start


def test_block_hashes_chain_on_the_whole_prefix():
    a = content_hashes(list(range(64)), 1, 64, BS)
    b = content_hashes([*range(16), *range(100, 148)], 1, 64, BS)
    c = content_hashes([*range(100, 116), *range(16, 64)], 1, 64, BS)
    assert len(a) == 4 and a[0] == b[0] and a[1] != b[1]
    # The same second block after a different first one is a different prefix.
    assert a[1] != c[1] and a[2] != c[2]
    assert content_hashes(list(range(40)), 1, 40, BS) == a[:2]  # only full blocks are named


def test_mooncake_ids_name_32_twin_blocks_each_and_only_full_ones():
    # Two Mooncake blocks (512 tokens each); the prompt stops 20 tokens into the second.
    hashes = content_hashes([7, 8], 512, 532, BS)
    assert len(hashes) == 33  # 32 blocks of id 7, then one full block of id 8
    other = content_hashes([7, 9], 512, 1024, BS)
    assert other[:32] == hashes[:32] and other[32] != hashes[32]
    assert content_hashes([7], 512, 2000, BS) == hashes[:32]  # tokens past the ids are unnamed


def test_a_shared_system_prompt_is_computed_once():
    kv = PrefixKVCache(100, BS)
    system = list(range(1000, 1064))  # 4 full blocks
    a = req(1, [*system, 1, 2, 3])
    b = req(2, [*system, 4, 5, 6, 7, 8])
    assert run_prefill(kv, a) == 0
    used = kv.used_blocks
    assert run_prefill(kv, b) == 64  # b prefills only its own 5 tokens
    assert kv.used_blocks == used + 1  # and allocates one block for them
    assert kv.block_table(2)[:4] == kv.block_table(1)[:4]
    assert kv.stats.hits == 64 and kv.stats.hit_lookups == 1 and kv.stats.lookups == 2


def test_a_full_hit_still_computes_the_last_token():
    kv = PrefixKVCache(100, BS)
    run_prefill(kv, req(1, range(64)))
    kv.free(1)
    again = req(2, range(64))
    # All four blocks are cached but the last one is recomputed to sample the first token.
    assert kv.budget().prefix_hit(again) == 48


def test_shared_blocks_are_refcounted_and_freed_by_the_last_holder():
    kv = PrefixKVCache(20, BS)
    a, b = req(1, range(48)), req(2, [*range(32), *range(500, 532)])
    run_prefill(kv, a)
    run_prefill(kv, b)
    assert kv.used_blocks == 5  # 3 of a's, 2 shared, plus 2 of b's own
    assert kv.releasable(1) == 1 and kv.releasable(2) == 2
    budget = kv.budget()
    budget.release(1)
    assert budget.free == kv.free_blocks + 1  # a preemption plan frees only a's own block
    assert kv.free(1) == 1 and kv.used_blocks == 4
    assert kv.free(2) == 4 and kv.used_blocks == 0


def test_freed_blocks_stay_cached_and_lru_evicts_the_oldest_tail_first():
    kv = PrefixKVCache(8, BS)
    a, b = req(1, range(64)), req(2, range(100, 164))
    run_prefill(kv, a)
    run_prefill(kv, b)
    kv.free(1)
    kv.free(2)
    assert kv.free_blocks == 8 and kv.cached_blocks == 8
    a_table, b_table = kv.block_table(1), kv.block_table(2)
    assert a_table == [] and b_table == []
    # A new request takes two blocks: a's tail blocks, freed first and in reverse.
    kv.grow(3, 32)
    assert kv.stats.evictions == 2
    a2, b2 = req(4, range(64)), req(5, range(100, 164))
    assert kv.budget().prefix_hit(a2) == 32  # a's first two blocks survive
    assert kv.budget().prefix_hit(b2) == 48  # b is untouched (capped at prompt - 1)


def test_a_hit_revives_a_free_block_out_of_the_eviction_order():
    kv = PrefixKVCache(6, BS)
    a = req(1, range(48))
    run_prefill(kv, a)
    kv.free(1)
    b = req(2, [*range(32), 9, 9])
    plan = kv.budget()
    start = plan.prefix_hit(b)
    assert start == 32
    # Reviving two free cached blocks costs them from the free count, plus one new block.
    assert plan.try_admit(b, start, b.prefill_target) and plan.free == 6 - 3
    run_prefill(kv, b, start)
    assert kv.free_blocks == 3
    kv.grow(3, 48)  # takes the remaining free blocks, never b's revived ones
    assert set(kv.block_table(3)).isdisjoint(kv.block_table(2))
    with pytest.raises(KVExhausted):
        kv.grow(4, 16)


def test_a_preempted_request_finds_its_own_blocks_without_trace_content():
    kv = PrefixKVCache(50, BS)
    r = Request(1, 0.0, 100, 50)  # a length-only trace: no content, no hashes
    run_prefill(kv, r)
    r.generated, r.kv_tokens = 20, 119
    kv.grow(1, 120)
    kv.keep_for_recompute(r)
    kv.free(1)
    r.reset_for_recompute()
    assert r.prefill_target == 120
    assert kv.budget().prefix_hit(r) == 112  # 7 full blocks of its own tokens
    other = Request(2, 0.0, 100, 50)
    other.block_hashes = private_hashes(other, 7)
    assert kv.budget().prefix_hit(other) == 0


def test_the_plain_cache_shares_nothing_and_engines_pick_by_policy():
    import policies

    kv = KVCache(10, BS)
    r = req(1, range(64))
    assert kv.budget().prefix_hit(r) == 0 and not kv.prefix_caching
    with pytest.raises(KVExhausted):
        kv.acquire(r, 16)
    assert isinstance(make_kv_cache(policies.get("vllm"), 10, BS), PrefixKVCache)
    off = policies.get("vllm", enable_prefix_caching="false")
    assert not make_kv_cache(off, 10, BS).prefix_caching
    assert not make_kv_cache(policies.get("nexus"), 10, BS).prefix_caching


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(1, 80)), max_size=40))
def test_free_counts_the_blocks_it_returns_whatever_the_tables_shared(ops):
    """``free``'s shortcut for tables that named and reused nothing returns what the
    refcount walk does: after any mix of shared prompts, growth, preemptions and frees, the
    free count it reports and the pool's free blocks agree with the refcounts."""
    kv = PrefixKVCache(64, BS)
    live: dict[int, Request] = {}
    for rid, prompt_kind, tokens in ops:
        r = live.get(rid)
        if r is None:
            content = [*range(32), *range(1000 * prompt_kind, 1000 * prompt_kind + tokens)]
            r = req(rid, content[: 16 + tokens]) if prompt_kind else Request(rid, 0.0, tokens, 9)
            plan = kv.budget()
            start = plan.prefix_hit(r)
            if not plan.try_admit(r, start, r.prefill_target):
                continue
            run_prefill(kv, r, start)
            live[rid] = r
        elif tokens % 3 == 0:  # a preemption keeps its blocks findable, then frees them
            kv.keep_for_recompute(r)
            expected = kv.releasable(rid)
            assert kv.free(rid) == expected
            del live[rid]
        elif tokens % 3 == 1 and kv.can_grow(rid, r.kv_tokens + tokens):
            kv.grow(rid, r.kv_tokens + tokens)
            r.kv_tokens += tokens
        else:
            expected = kv.releasable(rid)
            before = kv.free_blocks
            assert kv.free(rid) == expected
            assert kv.free_blocks == before + expected
            del live[rid]
        held = {b for t in kv._tables.values() for b in t}
        assert kv.free_blocks == kv.num_blocks - len(held)
