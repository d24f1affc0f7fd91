"""The partition a dispatch pass just chose is not asked for again: same decisions, fewer calls."""

import pytest

import policies
from policies import Slo
from tests.workloads import make_workload
from twin.core import scheduler
from twin.sim import Simulator


class OwnViews(Simulator):
    """An engine with its own views (as a two-GPU engine has): compared field by field."""

    def view(self, lane=None):
        return super().view(lane)


# vLLM asks its partition for decode-only batches: with few sequences, requests wait and
# finishes end its steady runs (with nobody waiting, its runs go on past them).
PARAMS = {"vllm": {"max_num_seqs": 8}}


def decisions(policy, model, monkeypatch, engine=Simulator, compare=True):
    if not compare:
        monkeypatch.setattr(scheduler, "same_state", lambda a, b: False)
    pol = policies.get(policy, **PARAMS.get(policy, {}))
    calls = 0
    partition = pol.partition

    def counted(view):
        nonlocal calls
        calls += 1
        return partition(view)

    pol.partition = counted
    sim = engine(make_workload(150, rate=20.0), pol, model, Slo(), record_decisions=True)
    sim.run()
    monkeypatch.undo()
    return sim.decisions, calls


@pytest.mark.parametrize("policy", ["duetserve", "nexus", "vllm"])
def test_a_settled_partition_gives_the_same_decisions_with_fewer_partition_calls(
    policy, h100_model, monkeypatch
):
    plain, plain_calls = decisions(policy, h100_model, monkeypatch)
    own, own_calls = decisions(policy, h100_model, monkeypatch, OwnViews)
    asked, asked_calls = decisions(policy, h100_model, monkeypatch, OwnViews, compare=False)
    assert plain == own == asked
    assert plain_calls == own_calls < asked_calls


def test_views_of_one_state_are_the_same_state_and_a_change_is_seen(h100_model):
    sim = Simulator(make_workload(5), policies.get("vllm"), h100_model, Slo())
    before = sim.view()
    assert scheduler.same_state(before, sim.view())
    sim.decode_steps += 1
    assert not scheduler.same_state(before, sim.view())
    sim.decode_steps -= 1
    lane_view = sim.view()
    lane_view.running = [*sim.running]  # a lane shown its own list of the same requests
    assert scheduler.same_state(before, lane_view)
    lane_view.running = [object()]  # ... or of other requests (a two-GPU engine's lanes)
    assert not scheduler.same_state(before, lane_view)
