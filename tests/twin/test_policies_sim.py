"""Every policy through the simulator: completion, conservation, valid partitions."""

import numpy as np
import pytest

import policies
from policies import EngineView, KVCache, Lane, Request, Slo, Status
from tests.workloads import make_workload
from traces import Workload
from twin.errors import SimulationError
from twin.sim import EngineConfig, Simulator, make_simulator
from twin.sim.disagg import DisaggSimulator

ALL = ["vllm", "sglang", "static-split", "nexus", "duetserve", "disagg"]


def run(workload, name, model, config=EngineConfig(), slo=Slo(), **params):
    sim = make_simulator(workload, policies.get(name, **params), model, slo, config)
    return sim, sim.run()


@pytest.fixture(scope="module")
def busy_trace():
    """The start of the Azure conversation trace at 4x its rate: queues form, splits move."""
    import traces

    return traces.load("azure-conv").first(300).scale_rate(4.0)


@pytest.mark.parametrize("name", ALL)
def test_every_policy_serves_a_real_trace_to_completion(busy_trace, h100_model, name):
    sim, result = run(busy_trace, name, h100_model)
    for req, out in zip(result.requests, busy_trace.output_tokens, strict=True):
        assert req.status == "finished"
        assert req.generated == out
        times = req.token_times_array()
        assert times.size == out and np.all(np.diff(times) > 0)
    assert sim.kv.free_blocks == sim.kv.num_blocks
    if isinstance(sim, DisaggSimulator):
        assert sim.prefill_kv.free_blocks == sim.prefill_kv.num_blocks
        assert not sim.transfers
    assert not sim.running and not sim.waiting


@pytest.mark.parametrize("name", ["nexus", "duetserve"])
def test_dynamic_splits_stay_on_the_hardware(busy_trace, h100_model, name):
    _, result = run(busy_trace, name, h100_model)
    gpu = h100_model.gpu
    tl = result.timeline
    assert result.partition_changes > 0
    for mixed, p, d in zip(tl["mixed_sms"], tl["prefill_sms"], tl["decode_sms"], strict=True):
        part = policies.Partition(int(mixed), int(p), int(d))
        assert gpu.is_valid(part), part
    # Batches running at the same instant never hold more SMs than the device has.
    it = result.iterations
    starts, ends, sms, lanes = it["start_s"], it["end_s"], it["sms"], it["lane"]
    for t in starts:
        active = (starts <= t) & (ends > t)
        assert len(set(lanes[active])) == active.sum()  # one batch per lane at a time
        assert sms[active].sum() <= gpu.num_sms
    on_grid = (sms % gpu.sm_granularity == 0) | ((gpu.num_sms - sms) % gpu.sm_granularity == 0)
    assert on_grid.all()


def test_duetserve_is_vllm_when_the_slo_is_never_at_risk(h100_model):
    wl = make_workload(n=60, rate=2.0)
    slo = Slo(tbt_s=10.0)
    _, a = run(wl, "vllm", h100_model, slo=slo)
    _, b = run(wl, "duetserve", h100_model, slo=slo)
    assert b.partition_changes == 0
    for ra, rb in zip(a.requests, b.requests, strict=True):
        np.testing.assert_allclose(ra.token_times_array(), rb.token_times_array())


def test_disagg_pays_the_kv_transfer_between_first_and_second_token(h100_model):
    prompt, output, gb_s = 4000, 3, 10.0
    wl = Workload(np.array([0.0]), np.array([prompt]), np.array([output]), name="one")
    pol = policies.get("disagg", link_gb_s=gb_s, link_latency_s=0.0)
    sim = make_simulator(wl, pol, h100_model)
    assert isinstance(sim, DisaggSimulator)
    (req,) = sim.run().requests
    transfer = prompt * h100_model.config.kv_bytes_per_token / (gb_s * 1e9)
    first_step = h100_model.predict(policies.BatchShape.decode(1, prompt + 1), 132)
    prefill = h100_model.predict(policies.BatchShape.prefill(prompt), 132)
    assert req.first_token_s == pytest.approx(prefill)
    gaps = np.diff(req.token_times_array())
    assert gaps[0] == pytest.approx(transfer + first_step, rel=1e-9)
    assert sim.kv_transferred_bytes == prompt * h100_model.config.kv_bytes_per_token


def test_disagg_decode_gpu_runs_beside_prefill_without_contention(h100_model):
    wl = make_workload(n=80, rate=8.0)
    sim, result = run(wl, "disagg", h100_model)
    it = result.iterations
    assert set(it["lane"]) == {Lane.PREFILL.value, Lane.DECODE.value}
    assert np.all(it["sms"] == 132)
    assert all(label == "" for label in it["co_runner"])


def test_single_gpu_simulator_rejects_a_two_gpu_partition(h100_model, workload):
    sim = Simulator(workload, policies.get("disagg"), h100_model)
    with pytest.raises(SimulationError, match="not a valid partition"):
        sim.run()


@pytest.mark.parametrize("name", ALL)
def test_fast_forward_matches_stepping_for_every_policy(busy_trace, h100_model, name):
    """Steady runs advanced in one event give the run that stepping one iteration gives.

    Split lanes re-rate a multi-step run when the other lane changes, spreading the new rate
    over its steps: token times then agree to microseconds rather than to rounding.
    """
    runs = []
    for fast_forward in (True, False):
        _, result = run(busy_trace, name, h100_model, EngineConfig(fast_forward=fast_forward))
        runs.append(result)
    fast, slow = runs
    assert len(fast.iterations["start_s"]) == len(slow.iterations["start_s"])
    for a, b in zip(fast.requests, slow.requests, strict=True):
        np.testing.assert_allclose(a.token_times_array(), b.token_times_array(), atol=1e-4)


@pytest.mark.parametrize("name", ["static-split", "nexus"])
def test_decode_runs_hold_through_arrivals_behind_a_running_prefill(busy_trace, h100_model, name):
    """A split whose partition ignores the queue behind a running prefill batch lets decode
    runs last until that batch ends: fewer launches, the same token times."""
    runs = []
    for honour in (True, False):
        policy = policies.get(name)
        policy.split_ignores_arrivals = honour
        sim = make_simulator(busy_trace, policy, h100_model, Slo(), EngineConfig(), None, True)
        runs.append((sim.run(), len(sim.decisions)))
    (fast, fast_launches), (cut, cut_launches) = runs
    assert fast_launches < cut_launches
    assert len(fast.iterations["start_s"]) == len(cut.iterations["start_s"])
    for a, b in zip(fast.requests, cut.requests, strict=True):
        np.testing.assert_allclose(a.token_times_array(), b.token_times_array(), atol=1e-4)


def test_only_split_decode_batches_promise_to_hold_through_arrivals(h100_model):
    kv = KVCache(1000, 16)
    running = []
    for i in range(4):
        kv.grow(i, 101)
        running.append(Request(i, 0.0, 100, 50, kv_tokens=100, generated=1, status=Status.RUNNING))

    def view(part, waiting):
        return EngineView(
            now=1.0,
            waiting=waiting,
            running=running,
            kv=kv,
            partition=part,
            in_flight={},
            slo=Slo(),
            model=h100_model,
            gpu=h100_model.gpu,
        )

    agg = h100_model.gpu.aggregated()
    queued = [Request(9, 0.0, 300, 10)]
    split = policies.get("static-split").partition(view(agg, queued))
    batch = policies.get("static-split").next_batch(view(split, queued), Lane.DECODE)
    assert batch.steady_steps > 1 and batch.through_arrivals
    # vllm's mixed batch takes a new prompt at its next step: an arrival must cut its runs.
    batch = policies.get("vllm").next_batch(view(agg, []), Lane.MIXED)
    assert batch.steady_steps > 1 and not batch.through_arrivals
