"""The same trace and policy through the simulator and the real engine (tiny model, CPU,
virtual clock) yields the same sequence of policy decisions, iteration by iteration, with
preemptions and with clients that go away (aborts) in every case."""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import policies  # noqa: E402
from gpu_runtime.build import build_runtime  # noqa: E402
from gpu_runtime.config import RuntimeConfig  # noqa: E402
from gpu_runtime.replay import replay  # noqa: E402
from policies import Slo, Status  # noqa: E402
from profiler import DatasheetModel  # noqa: E402
from tests.gpu_runtime.tiny import short_trace, tiny_llama  # noqa: E402
from tests.workloads import make_workload  # noqa: E402
from traces import Workload  # noqa: E402
from twin.sim import EngineConfig, Simulator  # noqa: E402


def expand(decisions):
    """The simulator records a steady run of k decode iterations once, with k."""
    return [(lane, part, batch, 1) for lane, part, batch, k in decisions for _ in range(k)]


CASES = {
    "vllm-trace": ("vllm", "trace", 24, {"max_num_batched_tokens": 128}),
    "vllm-synthetic": ("vllm", "synthetic", 40, {"max_num_batched_tokens": 256}),
    "static-split-trace": ("static-split", "trace", 24, {"max_num_batched_tokens": 128}),
    "static-split-synthetic": ("static-split", "synthetic", 32, {"decode_sms": 32}),
    "sglang-trace": ("sglang", "trace", 24, {"chunked_prefill_size": 128}),
    # Shared prompt prefixes: prefix-cache hits, partial hits and evictions in both engines.
    "vllm-shared": ("vllm", "shared", 24, {"max_num_batched_tokens": 128}),
    "sglang-shared": ("sglang", "shared", 24, {"chunked_prefill_size": 128}),
    # No hysteresis: nexus re-splits often, so partition changes are compared too.
    "nexus-trace": ("nexus", "trace", 24, {"max_num_batched_tokens": 128, "hysteresis": 0.0}),
    "nexus-synthetic": ("nexus", "synthetic", 40, {"max_num_batched_tokens": 256}),
    # The tiny model's mixed steps take ~1.5 ms; a target between its decode-only and mixed
    # predictions makes duetserve switch between aggregated and split mode.
    "duetserve-trace": ("duetserve", "trace", 24, {"tbt_target_s": 1.5004e-3}),
    "duetserve-synthetic": (
        "duetserve",
        "synthetic",
        40,
        {"max_num_batched_tokens": 256, "tbt_target_s": 1.5004e-3},
    ),
}
DYNAMIC = ("nexus-trace", "duetserve-trace", "duetserve-synthetic")


def shared_prefixes(n: int = 40, seed: int = 4) -> Workload:
    """Prompts that open with one of three system prompts (4 to 6 blocks of 16 tokens) and
    sometimes continue the previous turn of a conversation, named Mooncake-style by block ids."""
    rng = np.random.default_rng(seed)
    systems = [list(range(100 * g, 100 * g + 4 + g)) for g in range(3)]
    fresh = iter(range(10_000, 1_000_000))
    hashes, prompts, last = [], [], {}
    for _ in range(n):
        g = int(rng.integers(3))
        if g in last and rng.random() < 0.4:
            ids = last[g] + [next(fresh) for _ in range(int(rng.integers(1, 3)))]
        else:
            ids = systems[g] + [next(fresh) for _ in range(int(rng.integers(1, 4)))]
        last[g] = ids
        hashes.append(tuple(ids))
        prompts.append(16 * len(ids) - int(rng.integers(0, 12)))
    arrival = np.cumsum(rng.exponential(0.004, n))
    outputs = rng.integers(2, 14, n)
    return Workload(
        arrival - arrival[0],
        np.array(prompts),
        outputs,
        tuple(hashes),
        name="shared-prefixes",
        prefix_block_tokens=16,
    )


def workload(source: str):
    if source == "shared":
        return shared_prefixes()
    if source == "trace":
        return short_trace(40, prompt_div=8, max_output=16).scale_rate(100.0)
    return make_workload(n=40, rate=20.0, seed=2, prompt_mean=120, output_mean=20)


def simulate(case: str, aborts=None):
    policy, source, blocks, args = CASES[case]
    sim = Simulator(
        workload(source),
        policies.get(policy, **args),
        DatasheetModel(tiny_llama()),
        Slo(),
        EngineConfig(num_kv_blocks=blocks, block_size=16, fast_forward=True),
        record_decisions=True,
        aborts=aborts,
    )
    result = sim.run()
    result.kv_stats = getattr(sim.kv, "stats", None)
    return result


@functools.cache
def abort_times(case: str) -> dict[int, float]:
    """Clients that go away, from a run without aborts: the three that waited longest, half-way
    to their first batch, and every fifth other, half-way through its tokens."""
    served = [r for r in simulate(case).requests if r.status is not Status.REJECTED]
    waited = sorted(served, key=lambda r: r.scheduled_s - r.arrival_s)[-3:]
    aborts = {r.id: (r.arrival_s + r.scheduled_s) / 2 for r in waited}
    for req in served[::5]:
        aborts.setdefault(req.id, (req.first_token_s + req.finish_s) / 2)
    return aborts


@pytest.mark.parametrize("case", list(CASES))
def test_simulator_and_runtime_make_the_same_decisions(case):
    policy, source, blocks, args = CASES[case]
    simulated = simulate(case, abort_times(case))
    rt = build_runtime(
        tiny_llama(),
        RuntimeConfig(device="cpu", num_kv_blocks=blocks, block_size=16),
        policy,
        args,
        virtual_clock=True,
        record_decisions=True,
        latency_kind="datasheet",  # the simulator side's model, which these cases were tuned on
    )
    ran = replay(rt, workload(source), aborts=abort_times(case))
    assert any(k > 1 for *_, k in simulated.decisions)  # fast-forward was really on
    want = expand(simulated.decisions)
    assert len(ran.decisions) == len(want)
    assert ran.decisions == want
    for req, times in zip(simulated.requests, ran.records["token_times_s"], strict=True):
        np.testing.assert_allclose(times, req.token_times_array(), rtol=1e-9, atol=1e-12)
    assert ran.records["status"].tolist() == [str(r.status) for r in simulated.requests]
    assert ran.summary["preemptions"] == sum(r.preemptions for r in simulated.requests)
    cached = [r.cached_tokens for r in simulated.requests]
    assert ran.records["cached_tokens"].tolist() == cached
    stats = simulated.kv_stats
    if stats is not None:  # the same hits and evictions, counted by both engines
        assert ran.summary["prefix_hit_tokens"] == stats.hits
        assert ran.summary["prefix_lookups"] == stats.lookups
    if stats is not None and source == "shared":
        # Without content the simulator names only a preempted request's blocks, the runtime
        # every full prompt block by its token ids: evicting an unshareable name differs.
        assert ran.summary["prefix_evicted_blocks"] == stats.evictions


@pytest.mark.parametrize("case", ["vllm-shared", "sglang-shared"])
def test_shared_cases_hit_partially_and_evict(case):
    result = simulate(case)
    wl = workload("shared")
    stats = result.kv_stats
    assert stats.hits > 0 and stats.evictions > 0
    # Partial hits: some request finds fewer blocks than it shares with an earlier prompt
    # (evicted since), and some finds them all.
    full, partial = 0, 0
    for r in result.requests:
        shared = max(
            (_common(wl.prefix_hashes[r.id], wl.prefix_hashes[o]) for o in range(r.id)), default=0
        )
        reusable = min(16 * shared, (r.prompt_tokens - 1) // 16 * 16)
        if reusable and r.cached_tokens == reusable:
            full += 1
        elif reusable and r.cached_tokens < reusable:
            partial += 1
    assert full > 0 and partial > 0


def _common(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@pytest.mark.parametrize("case", list(CASES))
def test_parity_cases_preempt_so_that_recompute_is_compared_too(case):
    assert sum(r.preemptions for r in simulate(case, abort_times(case)).requests) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_parity_cases_abort_waiting_and_running_requests(case):
    aborts = abort_times(case)
    requests = simulate(case, aborts).requests
    aborted = [r for r in requests if r.status is Status.ABORTED]
    assert aborted and all(r.id in aborts for r in aborted)
    # Dropped at once (waiting, or between batches) and dropped when their batch ended.
    assert any(r.finish_s == aborts[r.id] for r in aborted)
    assert any(r.finish_s > aborts[r.id] for r in aborted)


@pytest.mark.parametrize("case", DYNAMIC)
def test_dynamic_cases_really_change_the_partition(case):
    assert simulate(case).partition_changes > 5
