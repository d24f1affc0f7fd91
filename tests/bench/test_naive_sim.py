"""bench/naive_sim.py: its scheduling on a toy latency model, and twin's vllm runs at light load."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.bench.loader import load_bench


class _Gpu:
    num_sms = 132


class OneSecondPerPass:
    """Every forward pass takes a second; remembers the shapes it was asked about."""

    gpu = _Gpu()

    def __init__(self) -> None:
        self.shapes = []

    def predict(self, shape, sms):
        self.shapes.append(shape)
        return 1.0


def test_one_request_takes_its_chunks_then_one_pass_per_output_token():
    naive = load_bench("naive_sim")
    model = OneSecondPerPass()
    cfg = naive.NaiveConfig(num_kv_blocks=100, block_size=4, max_num_batched_tokens=4)
    out = naive.simulate([0.0], [10], [3], model, cfg)
    # 10 prompt tokens in chunks of 4, 4, 2 (the last samples the first token), then 2 decodes
    assert out.ttft_s == [3.0] and out.e2e_s == [5.0] and out.iterations == 5
    assert [s.prefill_q for s in model.shapes[:3]] == [(4,), (4,), (2,)]
    assert [s.prefill_ctx for s in model.shapes[:3]] == [(0,), (4,), (8,)]
    assert [s.sampled for s in model.shapes[:3]] == [0, 0, 1]
    # the decodes attend to the prompt and the tokens generated so far, plus the new one
    assert [(s.n_decode, s.decode_ctx_sum) for s in model.shapes[3:]] == [(1, 11), (1, 12)]


def test_a_full_kv_cache_preempts_the_last_admitted_and_everyone_still_finishes():
    naive = load_bench("naive_sim")
    cfg = naive.NaiveConfig(num_kv_blocks=6, block_size=4, max_num_batched_tokens=64)
    out = naive.simulate([0.0, 0.0], [8, 8], [8, 8], OneSecondPerPass(), cfg)
    assert out.preemptions >= 1  # 2 x 16 tokens need 8 blocks, only 6 exist
    assert len(out.e2e_s) == 2 and out.rejected == 0
    assert all(math.isfinite(t) for t in out.e2e_s)


def test_requests_that_can_never_fit_are_rejected_and_idle_gaps_are_skipped():
    naive = load_bench("naive_sim")
    cfg = naive.NaiveConfig(num_kv_blocks=2, block_size=4)
    out = naive.simulate([0.0, 100.0], [4, 100], [2, 2], OneSecondPerPass(), cfg)
    # two passes for the one that fits; the clock jumps to the other arrival, no idle passes
    assert out.rejected == 1 and out.e2e_s == [2.0] and out.iterations == 2


def test_bad_limits_are_refused_by_name():
    naive = load_bench("naive_sim")
    with pytest.raises(ValueError, match="max_num_seqs"):
        naive.NaiveConfig(num_kv_blocks=10, max_num_seqs=0)


def test_at_light_load_it_times_requests_as_twins_vllm_policy_does():
    """No preemption, no shared prefixes: the same passes on the same latency model."""
    import policies
    import traces
    from policies import Slo
    from profiler import load_model_config
    from twin.latency import load_latency_model
    from twin.outputs.metrics import records_frame, request_metrics
    from twin.sim import EngineConfig, Simulator

    naive = load_bench("naive_sim")
    wl = traces.load("synthetic:n=60,rate=4,prompt=lognormal(800,0.8),output=lognormal(60,0.8)")
    model = load_latency_model(load_model_config("llama-3.1-8b"))
    policy = policies.get("vllm")
    result = Simulator(wl, policy, model, Slo(), EngineConfig()).run()
    twin = request_metrics(records_frame(result.requests), Slo())
    cfg = naive.NaiveConfig(
        num_kv_blocks=EngineConfig().kv_blocks(model),
        max_num_batched_tokens=policy.params.max_num_batched_tokens,
        max_num_seqs=policy.params.max_num_seqs,
    )
    out = naive.simulate(wl.arrival_s, wl.prompt_tokens, wl.output_tokens, model, cfg)
    assert out.preemptions == 0 and len(out.e2e_s) == len(wl)
    np.testing.assert_allclose(sorted(out.ttft_s), np.sort(twin["ttft_s"]), rtol=1e-9)
    np.testing.assert_allclose(sorted(out.e2e_s), np.sort(twin["e2e_s"]), rtol=1e-9)
