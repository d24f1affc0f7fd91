"""Runs through arrivals (``twin.sim.arrivals``) are the runs stepping gives.

A run that goes on through the finishes and arrivals its policy's admission rule covers stands
for many decisions. Each case runs a workload three ways: through arrivals, fast-forwarded
without them (each arrival, or each finish while requests wait, ends the run under way) and one
iteration at a time, and asks for the same requests, the same iterations and, step for step,
the same decisions.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policies
from policies import ArrivalAdmission, Slo
from tests.twin.test_fast_forward_cases import assert_same_run
from tests.workloads import make_workload
from traces import Workload
from twin.sim import EngineConfig, Simulator
from twin.sim.arrivals import ArrivalPhase

CASES = {
    # Light load: every arrival joins the run under way.
    "light": ({}, dict(n=120, rate=3.0, seed=9), None),
    # Busier: finishes and arrivals interleave, KV fills up and ends some runs.
    "busy": ({}, dict(n=150, rate=12.0, seed=3, prompt_mean=600), 900),
    # Prompts longer than the budget left: those arrivals are chunked, decided afresh.
    "long-prompts": (
        {"max_num_batched_tokens": 700},
        dict(n=100, rate=6.0, seed=4, prompt_mean=400),
        None,
    ),
    # Few sequences: an arrival waits for one.
    "few-seqs": ({"max_num_seqs": 5}, dict(n=80, rate=4.0, seed=2), None),
    # One-token outputs finish in the step that prefills them.
    "short-outputs": ({}, dict(n=100, rate=8.0, seed=5, output_mean=2), None),
    # Overload: the queue's head waits for KV, admitted as finishes free blocks.
    "kv-bound": ({}, dict(n=120, rate=40.0, seed=5, prompt_mean=500), 600),
    # The head waits for a free sequence.
    "seq-bound": ({"max_num_seqs": 6}, dict(n=80, rate=30.0, seed=2), None),
    "no-caching": (
        {"enable_prefix_caching": False, "watermark": 0.0},
        dict(n=100, rate=10.0, seed=8, prompt_mean=400),
        500,
    ),
}


def _simulate(workload, params, blocks, model, fast_forward=True, through=True, keep=True):
    config = EngineConfig(fast_forward=fast_forward, num_kv_blocks=blocks)
    sim = Simulator(
        workload, policies.get("vllm", **params), model, Slo(), config, record_decisions=True
    )
    sim.runs_through_arrivals = through
    sim.keep_token_times = keep
    joined = []
    plan = sim._plan

    def counting_plan(*args):
        run = plan(*args)
        if type(run.phase) is ArrivalPhase:
            joined.append(len(run.phase.joins))
        return run

    sim._plan = counting_plan
    return sim, sim.run(), joined


def _per_step(decisions) -> list[tuple]:
    return [d[:3] for d in decisions for _ in range(d[3])]


@pytest.mark.parametrize("name", sorted(CASES))
def test_runs_through_arrivals_are_the_runs_stepping_gives(name, h100_model):
    params, load, blocks = CASES[name]
    workload = make_workload(**load)
    through_sim, through, joined = _simulate(workload, params, blocks, h100_model)
    plain_sim, plain, none = _simulate(workload, params, blocks, h100_model, through=False)
    _, stepped, _ = _simulate(workload, params, blocks, h100_model, fast_forward=False)
    assert joined and not none  # the case runs through arrivals, and only when asked
    assert_same_run(through, stepped)
    assert_same_run(through, plain)
    assert _per_step(through.decisions) == _per_step(plain.decisions)
    assert through_sim.events < plain_sim.events
    assert through_sim.decode_steps == plain_sim.decode_steps
    for a, b in zip(through.requests, plain.requests, strict=True):
        assert (a.cached_tokens, a.admissions) == (b.cached_tokens, b.admissions)
        np.testing.assert_allclose(a.scheduled_s, b.scheduled_s, rtol=1e-12)
    assert through_sim.kv.free_blocks == through_sim.kv.num_blocks


def test_most_arrivals_at_light_load_join_a_run_under_way(h100_model):
    params, load, blocks = CASES["light"]
    workload = make_workload(**load)
    sim, _, joined = _simulate(workload, params, blocks, h100_model)
    assert sum(joined) >= 0.8 * len(workload)
    assert sim.events < len(workload) / 4


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_run_through_arrivals_logs_the_same_tokens_without_token_times(name, h100_model):
    from twin.outputs.metrics import records_frame, request_tokens

    params, load, blocks = CASES[name]
    workload = make_workload(**load)
    frames = []
    for keep in (True, False):
        sim, result, _ = _simulate(workload, params, blocks, h100_model, keep=keep)
        tokens = request_tokens(result.requests, sim.tokens)
        frames.append(records_frame(result.requests, tokens, token_times=True))
    a, b = frames
    assert list(a.columns) == list(b.columns)
    for column in a.columns:
        for x, y in zip(a[column], b[column], strict=True):
            if isinstance(x, str):
                assert x == y, column
            else:
                np.testing.assert_allclose(np.asarray(x, dtype=float), np.asarray(y, dtype=float))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(2, 40),
    rate=st.floats(0.5, 40.0),
    seed=st.integers(0, 10_000),
    prompt_mean=st.floats(5.0, 900.0),
    output_mean=st.floats(1.0, 200.0),
    blocks=st.one_of(st.none(), st.integers(150, 1200)),
    budget=st.integers(64, 4096),
    seqs=st.integers(1, 64),
    caching=st.booleans(),
    queue_head=st.sampled_from([1, 3, 256]),
)
def test_any_workload_runs_through_arrivals_as_stepped(
    h100_model, n, rate, seed, prompt_mean, output_mean, blocks, budget, seqs, caching, queue_head
):
    import twin.sim.arrivals as arrivals

    workload = make_workload(n, rate, seed, prompt_mean, output_mean)
    params = {
        "max_num_batched_tokens": budget,
        "max_num_seqs": seqs,
        "enable_prefix_caching": caching,
    }
    seen, arrivals.QUEUE_HEAD = arrivals.QUEUE_HEAD, queue_head
    try:
        _, through, _ = _simulate(workload, params, blocks, h100_model)
    finally:
        arrivals.QUEUE_HEAD = seen
    _, plain, _ = _simulate(workload, params, blocks, h100_model, through=False)
    _, stepped, _ = _simulate(workload, params, blocks, h100_model, fast_forward=False)
    assert_same_run(through, stepped)
    assert _per_step(through.decisions) == _per_step(plain.decisions)


def test_vllm_promises_its_own_admission_rule(h100_model):
    workload = make_workload(n=3, rate=0.01, seed=1)
    policy = policies.get("vllm", max_num_batched_tokens=65536, max_num_seqs=7, watermark=0.05)
    sim = Simulator(workload, policy, h100_model, Slo(), EngineConfig(num_kv_blocks=400))
    sim.arrive([sim._pending[0]])  # the first arrival, into an idle engine
    run = sim.in_flight[policies.Lane.MIXED]
    assert run.batch.then.admits_arrivals == ArrivalAdmission(65536, 7, 20)


def test_a_policy_built_on_vllm_makes_no_such_promise(h100_model):
    workload = make_workload(n=3, rate=0.01, seed=1)
    policy = policies.get("duetserve")
    sim = Simulator(workload, policy, h100_model, Slo(), EngineConfig(num_kv_blocks=400))
    sim.arrive([sim._pending[0]])
    for run in sim.in_flight.values():
        assert run.batch.then is None or run.batch.then.admits_arrivals is None


def test_prefix_hashes_or_aborts_keep_runs_from_passing_arrivals(h100_model):
    workload = make_workload(n=20, rate=3.0, seed=1)
    sim = Simulator(workload, policies.get("vllm"), h100_model, aborts={3: 60.0})
    assert not sim.runs_through_arrivals
    hashed = Workload(
        workload.arrival_s, workload.prompt_tokens, workload.output_tokens,
        prefix_hashes=tuple((i % 3, i) for i in range(20)), prefix_block_tokens=16,
    )  # fmt: skip
    assert not Simulator(hashed, policies.get("vllm"), h100_model).runs_through_arrivals
    unhashed = Simulator(hashed, policies.get("vllm", enable_prefix_caching=False), h100_model)
    assert unhashed.runs_through_arrivals


def test_a_run_that_sees_only_the_head_of_a_long_queue_is_still_stepping(h100_model, monkeypatch):
    import twin.sim.arrivals as arrivals

    monkeypatch.setattr(arrivals, "QUEUE_HEAD", 2)
    params, load, blocks = CASES["kv-bound"]
    workload = make_workload(**load)
    _, through, joined = _simulate(workload, params, blocks, h100_model)
    _, stepped, _ = _simulate(workload, params, blocks, h100_model, fast_forward=False)
    assert joined
    assert_same_run(through, stepped)
