import dataclasses

import numpy as np
import pytest

import policies
from policies import BatchShape, Lane, Partition, Slo
from tests.workloads import make_workload
from traces import Workload
from twin.errors import SimulationError
from twin.outputs.metrics import records_frame, summarize
from twin.sim import EngineConfig, Simulator


def run(workload, policy="vllm", model=None, config=EngineConfig(), **params):
    sim = Simulator(workload, policies.get(policy, **params), model, Slo(), config)
    return sim, sim.run()


def one(prompt: int, output: int) -> Workload:
    return Workload(np.array([0.0]), np.array([prompt]), np.array([output]), name="one")


@pytest.mark.parametrize("policy", ["vllm", "static-split"])
def test_every_request_finishes_once_with_its_output_tokens(workload, h100_model, policy):
    sim, result = run(workload, policy, h100_model)
    for req, out in zip(result.requests, workload.output_tokens, strict=True):
        assert req.status == "finished"
        assert req.generated == out
        times = req.token_times_array()
        assert times.size == out
        assert np.all(np.diff(times) > 0)
        assert req.first_token_s == times[0] and req.finish_s == times[-1]
    assert sim.kv.free_blocks == sim.kv.num_blocks
    assert not sim.running and not sim.waiting


def test_lone_request_matches_the_latency_model(h100_model):
    prompt, output = 3000, 50
    _, result = run(one(prompt, output), "vllm", h100_model)
    req = result.requests[0]
    ttft = h100_model.predict(BatchShape.prefill(prompt), 132)
    assert req.first_token_s == pytest.approx(ttft, rel=1e-9)
    # Decode step j attends to the prompt, the tokens so far and its own new one.
    decode = sum(
        h100_model.predict(BatchShape.decode(1, prompt + j + 1), 132) for j in range(output - 1)
    )
    assert req.finish_s == pytest.approx(ttft + decode, rel=1e-9)


def test_chunked_prefill_splits_a_long_prompt_under_the_token_budget(h100_model):
    _, result = run(one(5000, 2), "vllm", h100_model, max_num_batched_tokens=2048)
    prefill = [s for s in result.iterations["prefill_tokens"] if s > 0]
    assert prefill == [2048, 2048, 904]
    expected = sum(
        h100_model.predict(BatchShape.prefill(q, c, completes=last), 132)
        for q, c, last in ((2048, 0, False), (2048, 2048, False), (904, 4096, True))
    )
    assert result.requests[0].first_token_s == pytest.approx(expected, rel=1e-9)


def test_fast_forward_gives_the_same_run_as_stepping(h100_model):
    wl = make_workload(n=150, rate=6.0, seed=3)
    _, fast = run(wl, "vllm", h100_model)
    _, slow = run(wl, "vllm", h100_model, EngineConfig(fast_forward=False))
    assert len(fast.iterations["start_s"]) == len(slow.iterations["start_s"])
    for a, b in zip(fast.requests, slow.requests, strict=True):
        np.testing.assert_allclose(a.token_times_array(), b.token_times_array(), rtol=1e-9)
    np.testing.assert_allclose(fast.iterations["end_s"], slow.iterations["end_s"], rtol=1e-9)


def test_kv_exhaustion_preempts_and_still_completes_everything(h100_model):
    wl = make_workload(n=60, rate=50.0, seed=1, prompt_mean=600, output_mean=300)
    sim, result = run(wl, "vllm", h100_model, EngineConfig(num_kv_blocks=400))
    assert sum(r.preemptions for r in result.requests) > 0
    assert all(r.status == "finished" and r.generated == r.output_tokens for r in result.requests)
    assert sim.kv.free_blocks == 400


def test_requests_larger_than_the_kv_cache_are_rejected(h100_model):
    wl = Workload(np.array([0.0, 0.1]), np.array([100, 9000]), np.array([10, 10]))
    _, result = run(wl, "vllm", h100_model, EngineConfig(num_kv_blocks=100))
    assert [str(r.status) for r in result.requests] == ["finished", "rejected"]


def test_co_running_lanes_are_slowed_by_the_models_factor(h100_model):
    # A long decode on 64 SMs, then a large prompt on the other 68 SMs.
    wl = Workload(np.array([0.0, 0.2]), np.array([1000, 12000]), np.array([400, 1]))
    _, result = run(wl, "static-split", h100_model, decode_sms=64, max_num_batched_tokens=16384)
    it = result.iterations
    lanes = it["lane"]
    p = np.flatnonzero((lanes == "prefill") & (it["prefill_tokens"] == 12000))[0]
    p_start, p_end = it["start_s"][p], it["end_s"][p]
    prefill = BatchShape.prefill(12000)
    inside = np.flatnonzero(
        (lanes == "decode") & (it["start_s"] >= p_start) & (it["end_s"] <= p_end)
    )
    assert inside.size > 10
    for i in inside:
        dec = BatchShape.decode(1, int(it["context_tokens"][i]))
        factor = h100_model.slowdown(dec, 64, prefill, 68)
        assert factor > 1.01
        assert it["end_s"][i] - it["start_s"][i] == pytest.approx(
            h100_model.predict(dec, 64) * factor, rel=1e-6
        )
    alone = h100_model.predict(prefill, 68)
    assert alone < p_end - p_start < alone * h100_model.slowdown(prefill, 68, dec, 64) * 1.001


def test_a_seeded_run_is_deterministic(h100_model):
    wl = make_workload(n=120, seed=7)
    a = summarize(records_frame(run(wl, "static-split", h100_model)[1].requests), Slo())
    b = summarize(records_frame(run(wl, "static-split", h100_model)[1].requests), Slo())
    assert a == b


class _BadPartition(policies.SchedulingPolicy):
    name = "bad"

    def partition(self, view):
        return Partition.split(100, 40)

    def next_batch(self, view, lane):
        return None


class _Idle(policies.SchedulingPolicy):
    name = "idle"

    def next_batch(self, view, lane):
        return None


def test_an_invalid_partition_is_reported(workload, h100_model):
    sim = Simulator(workload, _BadPartition(None), h100_model)
    with pytest.raises(SimulationError, match="not a valid partition"):
        sim.run()


def test_a_policy_that_never_schedules_is_reported(workload, h100_model):
    sim = Simulator(workload, _Idle(None), h100_model)
    with pytest.raises(SimulationError, match="unfinished"):
        sim.run()


def test_mode_switch_waits_for_running_batches(h100_model):
    class Flip(policies.vllm.VllmPolicy):
        name = "flip"

        def partition(self, view):
            if view.now < 0.5:
                return view.gpu.aggregated()
            return view.gpu.split_with_decode(64)

        def next_batch(self, view, lane):
            if lane is Lane.MIXED:
                return super().next_batch(view, lane)
            return policies.get("static-split", decode_sms=64).next_batch(view, lane)

    wl = make_workload(n=40, rate=20, seed=2)
    sim = Simulator(wl, Flip(policies.vllm.VllmParams()), h100_model)
    result = sim.run()
    it = result.iterations
    mixed_end = it["end_s"][it["lane"] == "mixed"].max()
    split_start = it["start_s"][it["lane"] != "mixed"].min()
    assert split_start >= mixed_end
    assert all(r.status == "finished" for r in result.requests)


def test_engine_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EngineConfig().block_size = 32


def test_aborted_requests_stop_at_once_or_when_their_batch_ends_and_free_their_kv(h100_model):
    wl = make_workload(n=60, rate=40.0, seed=4)
    sim = Simulator(wl, policies.get("vllm"), h100_model, Slo(), EngineConfig())
    done = sim.run().requests
    waited = max(done, key=lambda r: r.scheduled_s - r.arrival_s)
    assert waited.scheduled_s > waited.arrival_s and waited.id != 10
    # Half-way through request 10's tokens, and while the longest-waiting one still waits.
    aborts = {
        10: (done[10].first_token_s + done[10].finish_s) / 2,
        waited.id: (waited.arrival_s + waited.scheduled_s) / 2,
    }
    sim = Simulator(wl, policies.get("vllm"), h100_model, Slo(), EngineConfig(), aborts=aborts)
    result = sim.run()
    by_id = {r.id: r for r in result.requests}
    assert by_id[10].status == "aborted" and 0 < by_id[10].generated < wl.output_tokens[10]
    assert by_id[10].finish_s >= aborts[10]  # in flight then: dropped when its batch ends
    gone = by_id[waited.id]
    assert gone.status == "aborted" and gone.finish_s == aborts[waited.id]
    assert gone.generated == 0
    assert sim.stats.aborted == 2 and sim.stats.finished == len(wl) - 2
    assert sim.kv.free_blocks == sim.kv.num_blocks
    assert records_frame(result.requests)["status"].tolist().count("aborted") == 2


@pytest.mark.parametrize("policy", ["vllm", "sglang", "nexus"])
def test_unflagged_aggregated_runs_simulate_as_flagged_ones(h100_model, policy):
    """The simulator leaves an aggregated run's decode requests without ``in_flight``;
    flagging them as the runtime does changes nothing, aborts mid-run included."""
    wl = make_workload(n=80, rate=30.0, seed=5)
    aborts = {i: float(wl.arrival_s[i]) + 0.3 for i in range(3, 80, 9)}

    def run(flagged: bool):
        sim = Simulator(wl, policies.get(policy), h100_model, Slo(), EngineConfig(),
                        record_decisions=True, aborts=aborts)  # fmt: skip
        sim.flags_aggregated_runs = flagged
        result = sim.run()
        return sim, records_frame(result.requests), result

    flagged_sim, flagged, flagged_run = run(True)
    plain_sim, plain, plain_run = run(False)
    assert flagged.equals(plain)
    assert flagged_run.decisions == plain_run.decisions
    assert all(np.array_equal(flagged_run.iterations[c], plain_run.iterations[c])
               for c in flagged_run.iterations)  # fmt: skip
    assert plain_sim.stats.aborted == flagged_sim.stats.aborted > 0
    assert not any(r.in_flight for r in plain_run.requests)


@pytest.mark.parametrize(
    "aborts, message",
    [
        ({0: 0.0}, "after its arrival"),
        ({0: float("nan")}, "finite time"),
        ({7: 1.0}, "not in the workload"),
    ],
)
def test_an_abort_schedule_that_cannot_happen_is_a_one_line_error(h100_model, aborts, message):
    from twin.errors import TwinError

    with pytest.raises(TwinError, match=message):
        Simulator(one(100, 10), policies.get("vllm"), h100_model, aborts=aborts)
