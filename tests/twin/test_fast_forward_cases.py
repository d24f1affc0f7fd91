"""Fast-forward equals stepping, under the loads where its promises are widest.

Each case runs one workload twice, advancing steady runs several iterations an event and one
iteration at a time, and asks for the same run: every request's token times, status and
preemptions, and every iteration's shape, lane and times. Overload is where the promises that
pass arrivals (a queue whose head cannot be admitted) and mixed steps that lead into steady
decoding are taken most, and where KV runs out inside them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import policies
from policies import Slo
from tests.workloads import make_workload
from twin.outputs.metrics import records_frame, request_tokens
from twin.sim import EngineConfig, Simulator

RTOL = 1e-12
# Beside a co-runner, a run fast-forwarded is slowed by the factor of the shape it started
# with, re-rated when the co-runner changes; stepped, each iteration is slowed by its own
# shape's factor. Context grows a token a step, so split runs agree to about 1e-7.
SPLIT_RTOL = 1e-6
SPLIT = {"duetserve-overload", "nexus-overload", "static-split-overload"}

CASES = {
    # The queue's head waits for KV: preemptions, watermark, prefix caching on by default.
    "vllm-kv-bound": ("vllm", {}, dict(n=120, rate=40.0, seed=5, prompt_mean=500), 600),
    # The head waits for a free sequence.
    "vllm-seq-bound": ("vllm", {"max_num_seqs": 6}, dict(n=80, rate=30.0, seed=2), None),
    # The head waits for token budget the decodes use up.
    "vllm-budget-bound": (
        "vllm",
        {"max_num_batched_tokens": 12, "max_num_seqs": 64},
        dict(n=40, rate=20.0, seed=4, prompt_mean=10, output_mean=60),
        None,
    ),
    # Light load: prompts that finish their prefill in one step, then steady decoding.
    "vllm-light": ("vllm", {}, dict(n=80, rate=3.0, seed=9), None),
    "vllm-no-caching": (
        "vllm",
        {"enable_prefix_caching": False, "watermark": 0.0},
        dict(n=100, rate=30.0, seed=8, prompt_mean=400),
        500,
    ),
    "sglang-overload": ("sglang", {}, dict(n=100, rate=30.0, seed=6, prompt_mean=500), 600),
    "duetserve-overload": ("duetserve", {}, dict(n=80, rate=25.0, seed=3), 800),
    "nexus-overload": ("nexus", {}, dict(n=60, rate=20.0, seed=1), 800),
    "static-split-overload": ("static-split", {}, dict(n=60, rate=20.0, seed=7), 800),
}


def simulate(name: str, model, fast_forward: bool, aborts=None):
    policy, params, load, blocks = CASES[name]
    workload = make_workload(**load)
    config = EngineConfig(fast_forward=fast_forward, num_kv_blocks=blocks)
    sim = Simulator(workload, policies.get(policy, **params), model, Slo(), config, aborts=aborts)
    return sim, sim.run()


def assert_same_run(fast, slow, rtol: float = RTOL) -> None:
    for a, b in zip(fast.requests, slow.requests, strict=True):
        assert (a.id, str(a.status), a.preemptions, a.generated) == (
            b.id, str(b.status), b.preemptions, b.generated
        )  # fmt: skip
        np.testing.assert_allclose(a.token_times_array(), b.token_times_array(), rtol=rtol)
        for field in ("first_token_s", "finish_s"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=rtol)
    assert fast.iterations.keys() == slow.iterations.keys()
    # Runs are logged as they end: with two lanes, runs of many iterations interleave the
    # lanes' rows differently. Each lane's iterations in time order are the same.
    order = [_lane_order(run.iterations) for run in (fast, slow)]
    for column in fast.iterations:
        if column in ("predicted_s", "co_runner") and rtol != RTOL:
            continue  # each run's, not each iteration's: at launch, and the last co-runner
        values = fast.iterations[column][order[0]]
        other = slow.iterations[column][order[1]]
        assert len(values) == len(other), column
        if values.dtype.kind == "f":
            np.testing.assert_allclose(values, other, rtol=rtol, err_msg=column)
        else:
            assert np.array_equal(values, other), column


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_forward_gives_the_same_run_as_stepping(name, h100_model):
    fast_sim, fast = simulate(name, h100_model, True)
    slow_sim, slow = simulate(name, h100_model, False)
    assert_same_run(fast, slow, SPLIT_RTOL if name in SPLIT else RTOL)
    # The case exercises fast-forward at all: fewer events than iterations.
    assert len(fast_sim._iters) < len(slow_sim._iters)


def test_arrivals_behind_a_blocked_queue_do_not_cut_a_steady_run(h100_model):
    policy, params, load, blocks = CASES["vllm-seq-bound"]
    workload = make_workload(**load)
    sim = Simulator(
        workload, policies.get(policy, **params), h100_model, Slo(),
        EngineConfig(num_kv_blocks=blocks), record_decisions=True,
    )  # fmt: skip
    sim.run()
    table = sim.iteration_table()
    steps = np.array([d[3] for d in sim.decisions])
    last = np.cumsum(steps) - 1  # each run's last iteration
    first = last - steps + 1
    # Runs whose last iteration starts after an arrival that came during the run: before the
    # queue's head blocked arrivals, every arrival ended its run at the iteration under way.
    arrivals = np.asarray(workload.arrival_s)
    passed = [
        np.any((arrivals > table["start_s"][f]) & (arrivals < table["start_s"][e]))
        for f, e in zip(first, last, strict=True)
    ]
    assert sum(passed) >= 10


def test_aborts_inside_passed_runs_match_stepping(h100_model):
    workload = make_workload(**CASES["vllm-kv-bound"][2])
    aborts = {i: float(workload.arrival_s[i]) + 0.5 for i in range(0, 120, 7)}
    _, fast = simulate("vllm-kv-bound", h100_model, True, aborts)
    _, slow = simulate("vllm-kv-bound", h100_model, False, aborts)
    assert sum(str(r.status) == "aborted" for r in fast.requests) > 0
    assert_same_run(fast, slow)


def _lane_order(iterations) -> np.ndarray:
    return np.lexsort((iterations["start_s"], iterations["lane"].astype(str)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_run_without_per_request_token_times_is_the_same_run(name, h100_model):
    """``twin simulate`` keeps no per-request token times, which lets a run's decode phase
    advance each request in one pass: the same run, token for token, as keeping them."""
    runs = []
    for keep in (True, False):
        policy, params, load, blocks = CASES[name]
        sim = Simulator(
            make_workload(**load), policies.get(policy, **params), h100_model, Slo(),
            EngineConfig(num_kv_blocks=blocks),
        )  # fmt: skip
        sim.keep_token_times = keep
        result = sim.run()
        tokens = request_tokens(result.requests, sim.tokens)
        runs.append((result, records_frame(result.requests, tokens, token_times=True)))
    (kept, kept_records), (lean, lean_records) = runs
    pd.testing.assert_frame_equal(lean_records, kept_records, check_exact=True)
    for a, b in zip(kept.requests, lean.requests, strict=True):
        assert (a.kv_tokens, a.generated, a.finish_s) == (b.kv_tokens, b.generated, b.finish_s)
    for column, values in kept.iterations.items():
        assert np.array_equal(values, lean.iterations[column]), column
