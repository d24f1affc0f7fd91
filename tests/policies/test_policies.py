"""Decisions of the paper policies on hand-built engine states."""

import pytest

import policies
from policies import (
    Batch,
    KVCache,
    Lane,
    Partition,
    PrefillChunk,
    Request,
    Status,
)
from tests.policies.policy_views import decoding, make_view


@pytest.fixture(scope="module")
def model():
    from profiler import DatasheetModel, load_model_config

    return DatasheetModel(load_model_config("llama-3.1-8b"))


def valid(model, part: Partition) -> bool:
    return model.gpu.is_valid(part)


# ----------------------------------------------------------------------------- sglang
def test_sglang_runs_new_prefills_before_decodes_when_they_fit(model):
    kv = KVCache(1000, 16)
    running = [decoding(i, kv, 100) for i in range(3)]
    waiting = [Request(10, 0.0, 500, 10)]
    batch = policies.get("sglang").next_batch(make_view(model, waiting, running, kv), Lane.MIXED)
    assert [c.request.id for c in batch.prefill] == [10] and batch.decode == []


def test_sglang_decodes_when_the_prompt_would_eat_the_decode_reserve(model):
    kv = KVCache(100, 16)  # 1600 tokens; 3 x 100 held
    running = [decoding(i, kv, 100, out=2000) for i in range(3)]
    waiting = [Request(10, 0.0, 600, 10)]
    view = make_view(model, waiting, running, kv)
    # Reserve 0.5 x ~6000 remaining output tokens: the prompt does not fit beside it.
    held = {"min_new_token_ratio_factor": 1.0}  # the ratio stays where it starts
    batch = policies.get("sglang", init_new_token_ratio=0.5, **held).next_batch(view, Lane.MIXED)
    assert batch.prefill == [] and [r.id for r in batch.decode] == [0, 1, 2]
    # The reserve shrinks by 0.5 x 3 tokens a step: 1264 free tokens exceed it and the
    # prompt's 610 after 1564 more steps, and not before.
    assert batch.steady_steps == 1564
    # With no reserve the same prompt is admitted first.
    batch = policies.get("sglang", init_new_token_ratio=0.0, **held).next_batch(view, Lane.MIXED)
    assert [c.request.id for c in batch.prefill] == [10]


def test_sglang_continues_a_chunked_prompt_before_admitting_new_ones(model):
    kv = KVCache(1000, 16)
    half = Request(5, 0.0, 10_000, 10, kv_tokens=8192, status=Status.RUNNING)
    kv.grow(5, 8192)
    waiting = [Request(6, 0.0, 100, 10)]
    batch = policies.get("sglang").next_batch(make_view(model, waiting, [half], kv), Lane.MIXED)
    assert [(c.request.id, c.start, c.length) for c in batch.prefill] == [
        (5, 8192, 1808),
        (6, 0, 100),
    ]


# ----------------------------------------------------------------------------- disagg
def test_disagg_asks_for_two_whole_gpus_and_prices_the_link(model):
    pol = policies.get("disagg", link_gb_s=100.0, link_latency_s=0.0)
    assert pol.gpus == 2
    assert pol.partition(make_view(model)) == Partition.split(132, 132)
    assert pol.params.transfer_s(1e9) == pytest.approx(0.01)
    with pytest.raises(policies.PolicyError):
        policies.get("disagg", link_gb_s=0)


def test_split_lanes_never_mix_phases(model):
    kv = KVCache(1000, 16)
    running = [decoding(0, kv, 100)]
    waiting = [Request(1, 0.0, 300, 10)]
    for name in ("nexus", "disagg", "static-split"):
        pol = policies.get(name)
        view = make_view(model, waiting, running, kv, partition=Partition.split(84, 48))
        d = pol.next_batch(view, Lane.DECODE)
        p = pol.next_batch(view, Lane.PREFILL)
        assert isinstance(d, Batch) and d.prefill == [] and [r.id for r in d.decode] == [0]
        assert isinstance(p, Batch) and p.decode == []
        assert [(c.request.id, c.length) for c in p.prefill] == [(1, 300)]
        assert isinstance(p.prefill[0], PrefillChunk)


def test_sglang_retracts_the_request_with_the_least_output_and_longest_prompt(model):
    kv = KVCache(19, 16)
    old = decoding(1, kv, 96, generated=50)
    young_short = decoding(2, kv, 96, generated=2)
    young_long = Request(3, 0.0, 112, 200, generated=2, kv_tokens=112, status=Status.RUNNING)
    kv.grow(3, 112)  # 6 + 6 + 7 = 19 blocks: every decode needs one more
    batch = policies.get("sglang").next_batch(
        make_view(model, (), [old, young_short, young_long], kv), Lane.MIXED
    )
    assert [r.id for r in batch.preempt] == [3]
    assert [r.id for r in batch.decode] == [1, 2]
