"""Prefix caching through the simulator: Mooncake hits, preemptions, records and summary."""

import numpy as np
import pytest

import policies
import traces
from twin.experiment import SimConfig, simulate
from twin.sim import EngineConfig, Simulator


@pytest.fixture(scope="module")
def mooncake():
    return traces.load("mooncake").first(200)


def run(wl, model, policy, caching, **config):
    sim = Simulator(
        wl,
        policies.get(policy, enable_prefix_caching=caching),
        model,
        config=EngineConfig(**config),
    )
    return sim, sim.run()


def test_vllm_on_mooncake_hits_the_cache_and_preempts_less(mooncake, h100_model):
    on_sim, on = run(mooncake, h100_model, "vllm", True)
    _, off = run(mooncake, h100_model, "vllm", False)
    stats = on_sim.kv.stats
    assert stats.hits > 0 and stats.hit_lookups > 0
    assert sum(r.preemptions for r in on.requests) < sum(r.preemptions for r in off.requests)
    assert any(r.cached_tokens > 0 for r in on.requests)
    assert all(r.cached_tokens % 16 == 0 and r.cached_tokens < r.prompt_tokens for r in on.requests)


@pytest.mark.parametrize("policy", ["vllm", "sglang"])
def test_fast_forward_gives_the_same_run_as_stepping_with_caching(mooncake, h100_model, policy):
    fast_sim, fast = run(mooncake, h100_model, policy, True)
    slow_sim, slow = run(mooncake, h100_model, policy, True, fast_forward=False)
    assert fast_sim.kv.stats == slow_sim.kv.stats
    for a, b in zip(fast.requests, slow.requests, strict=True):
        assert a.cached_tokens == b.cached_tokens and a.preemptions == b.preemptions
        np.testing.assert_allclose(a.token_times_array(), b.token_times_array(), rtol=1e-9)


def test_summary_and_records_carry_hits_preemptions_and_retractions():
    cfg = SimConfig(trace="mooncake", max_requests=60, policy="sglang")
    result = simulate(cfg)
    s = result.summary
    assert s["prefix_caching"] and "Mooncake" in s["prefix_hash_source"]
    assert s["prefix_lookups"] >= 60 and 0 <= s["prefix_hit_rate_tokens"] <= 1
    assert s["prefix_hit_tokens"] == pytest.approx(
        s["prefix_hit_rate_tokens"] * s["prefix_queried_tokens"]
    )
    assert s["retractions"] == s["preemptions"]
    assert "cached_tokens" in result.records.columns
    off = simulate(
        SimConfig(
            trace="azure-conv", max_requests=60, policy_args={"enable_prefix_caching": "false"}
        )
    )
    assert not off.summary["prefix_caching"] and off.summary["prefix_hit_tokens"] == 0
    plain = simulate(SimConfig(trace="azure-conv", max_requests=60))
    assert plain.summary["prefix_hash_source"].startswith("none")
    assert plain.summary["retractions"] == 0
