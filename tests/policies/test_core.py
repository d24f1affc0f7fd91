import numpy as np
import pytest

import policies
from policies import (
    Batch,
    EngineView,
    GpuSpec,
    KVCache,
    KVExhausted,
    Lane,
    Partition,
    PolicyError,
    PrefillChunk,
    Request,
    Slo,
    Status,
)

H100 = GpuSpec("H100", 132, 8, 80 * 10**9)


def view(waiting=(), running=(), kv=None, partition=None, in_flight=None, now=0.0):
    return EngineView(
        now=now,
        waiting=list(waiting),
        running=list(running),
        kv=kv or KVCache(1000, 16),
        partition=partition or H100.aggregated(),
        in_flight=in_flight or {},
        slo=Slo(),
        model=None,
        gpu=H100,
    )


def decoding(rid, kv, ctx, out=100):
    r = Request(rid, 0.0, ctx, out, generated=1, kv_tokens=ctx, status=Status.RUNNING)
    kv.grow(rid, ctx)
    return r


def test_kv_cache_allocates_and_frees_blocks():
    kv = KVCache(10, 16)
    assert kv.grow(1, 17) and kv.held(1) == 2
    assert kv.grow(1, 32) == [] and kv.held(1) == 2
    kv.grow(2, 16 * 8)
    assert kv.free_blocks == 0 and not kv.can_grow(1, 33)
    with pytest.raises(KVExhausted):
        kv.grow(1, 33)
    assert kv.free(2) == 8 and kv.free_blocks == 8
    assert len(set(kv.block_table(1))) == 2


def test_budget_plans_without_touching_the_cache():
    kv = KVCache(4, 16)
    kv.grow(1, 32)
    budget = kv.budget()
    assert budget.try_grow(2, 32) and not budget.try_grow(3, 1)
    budget.release(1)
    assert budget.try_grow(3, 32)
    assert kv.free_blocks == 2 and kv.held(1) == 2


def test_vllm_runs_decodes_first_then_chunks_under_the_token_budget():
    kv = KVCache(1000, 16)
    running = [decoding(i, kv, 100) for i in range(3)]
    waiting = [Request(10, 0.0, 5000, 10), Request(11, 0.0, 50, 10)]
    batch = policies.get("vllm", max_num_batched_tokens=1000).next_batch(
        view(waiting, running, kv), Lane.MIXED
    )
    assert [r.id for r in batch.decode] == [0, 1, 2]
    assert [(c.request.id, c.start, c.length) for c in batch.prefill] == [(10, 0, 997)]
    assert batch.steady_steps == 1


def test_vllm_decode_only_batch_is_steady_until_something_changes():
    kv = KVCache(1000, 16)
    batch = policies.get("vllm").next_batch(view((), [decoding(0, kv, 10)], kv), Lane.MIXED)
    assert batch.steady_steps == policies.UNTIL_CHANGE


def test_vllm_preempts_the_newest_request_when_kv_runs_out():
    kv = KVCache(3, 16)
    old, new = decoding(0, kv, 32), decoding(1, kv, 16)  # old fills 2 blocks, new 1
    batch = policies.get("vllm").next_batch(view((), [old, new], kv), Lane.MIXED)
    assert batch.preempt == [new]
    assert batch.decode == [old]


def test_waiting_admission_stops_at_the_first_request_that_does_not_fit():
    kv = KVCache(4, 16)
    waiting = [Request(0, 0.0, 100, 5), Request(1, 0.0, 10, 5)]
    assert policies.get("vllm").next_batch(view(waiting, (), kv), Lane.MIXED) is None


def test_static_split_lanes_get_their_own_work():
    kv = KVCache(1000, 16)
    dec = decoding(0, kv, 50)
    new = Request(1, 0.0, 300, 5)
    pol = policies.get("static-split", decode_sms=48)
    v = view([new], [dec], kv, partition=H100.split_with_decode(48))
    assert pol.partition(v) == Partition.split(84, 48)
    assert pol.next_batch(v, Lane.DECODE).decode == [dec]
    assert [c.request for c in pol.next_batch(v, Lane.PREFILL).prefill] == [new]


@pytest.mark.parametrize("blocks", [3, 4])
def test_in_flight_requests_are_neither_scheduled_nor_preempted(blocks):
    kv = KVCache(blocks, 16)
    busy, other = decoding(0, kv, 32), decoding(1, kv, 16)
    busy.in_flight = True
    batch = policies.get("static-split").next_batch(
        view((), [busy, other], kv, partition=H100.split_with_decode(48)), Lane.DECODE
    )
    if blocks == 4:
        assert batch.decode == [other] and batch.preempt == []
    else:  # no room for other's next block and the in-flight request cannot be the victim
        assert batch.decode == [] and batch.preempt == [other]


def test_gpu_spec_follows_the_hardware_granularity():
    assert H100.is_valid(Partition.split(84, 48))
    assert H100.is_valid(Partition.split(4 + 64, 64))
    assert not H100.is_valid(Partition.split(100, 40))  # 100 = 132 - 32 fine, but sum is 140
    assert not H100.is_valid(Partition.split(128, 4))
    options = H100.decode_sm_options()
    assert min(options) == 8 and max(options) == 124
    assert all(H100.is_valid(H100.split_with_decode(d)) for d in options)


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(PolicyError, match="already registered"):
        policies.register("vllm", object)(type("Dup", (), {}))
    with pytest.raises(PolicyError, match="unknown policy 'nope'; choose one of"):
        policies.get("nope")
    with pytest.raises(PolicyError, match="no parameter 'budget'"):
        policies.get("vllm", budget=3)
    with pytest.raises(PolicyError, match="wants an int"):
        policies.get("vllm", max_num_seqs="many")
    assert policies.get("vllm", max_num_seqs="8").params.max_num_seqs == 8


def test_batch_shape_summarises_work():
    kv = KVCache(100, 16)
    a, b = decoding(0, kv, 10), decoding(1, kv, 20)
    new = Request(2, 0.0, 64, 5)
    shape = Batch(prefill=[PrefillChunk(new, 0, 64)], decode=[a, b]).shape()
    assert shape.tokens == 66 and shape.decode_ctx_sum == 32 and shape.sampled == 3
    assert shape.prefill_q == (64,) and shape.prefill_ctx == (0,)


def test_recompute_preemption_refills_prompt_and_output():
    r = Request(0, 0.0, 100, 50, generated=20, kv_tokens=119)
    r.reset_for_recompute()
    assert r.prefill_target == 120 and r.kv_tokens == 0 and r.preemptions == 1
    assert r.is_prefilling and not r.is_decoding
    assert np.isnan(r.first_token_s)


def test_explicit_bounds_govern_whole_numbers_beyond_float_precision():
    from policies.numbers import MAX_COUNT, check_number

    seed_max = 2**63 - 1
    assert check_number(seed_max, "seed", integer=True, low=-(2**63), high=seed_max) == seed_max
    with pytest.raises(ValueError, match="too large"):
        check_number(MAX_COUNT + 1, "count", integer=True, low=0)
    with pytest.raises(ValueError, match="seed must be in"):
        check_number(seed_max + 1, "seed", integer=True, low=-(2**63), high=seed_max)
