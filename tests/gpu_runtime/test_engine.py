"""The real engine on a CPU: conservation, preemption, aborts, and the policy asked every step."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import policies  # noqa: E402
from gpu_runtime.build import build_runtime  # noqa: E402
from gpu_runtime.config import RuntimeConfig  # noqa: E402
from gpu_runtime.engine import EngineError  # noqa: E402
from gpu_runtime.jobs import Job  # noqa: E402
from gpu_runtime.replay import make_jobs, replay  # noqa: E402
from policies import Partition, Request, Status  # noqa: E402
from tests.gpu_runtime.tiny import short_trace, tiny_llama  # noqa: E402


def runtime(policy="vllm", blocks=512, virtual=False, **args):
    settings = RuntimeConfig(device="cpu", num_kv_blocks=blocks, block_size=16)
    return build_runtime(tiny_llama(), settings, policy, args, virtual_clock=virtual)


@pytest.mark.parametrize("policy", ["vllm", "static-split"])
def test_a_short_trace_finishes_every_request_once_with_its_tokens(policy):
    wl = short_trace(20).scale_rate(40.0)  # real arrivals, squeezed into a third of a second
    rt = runtime(policy, max_num_batched_tokens=128)
    result = replay(rt, wl)
    engine = rt.engine
    records = result.records
    assert len(records) == 20 and (records["status"] == "finished").all()
    assert records["output_tokens"].tolist() == wl.output_tokens.tolist()
    for req, times in zip(engine.requests, records["token_times_s"], strict=True):
        assert len(times) == req.output_tokens == req.generated
        assert np.all(np.diff(times) >= 0) and times[0] == req.first_token_s
        assert len(engine.jobs[req.id].output_ids) == req.output_tokens
        assert req.first_token_s >= req.arrival_s
    assert engine.kv.free_blocks == engine.kv.num_blocks
    assert not engine.running and not engine.waiting and not engine.in_flight
    assert len(result.iterations) == engine.stats.iterations > 0
    if policy == "static-split":
        assert set(result.iterations["lane"]) == {"prefill", "decode"}
    assert result.summary["finished"] == 20 and result.summary["clock"] == "wall"


def test_preemption_and_recompute_leave_greedy_outputs_unchanged():
    """A KV cache too small for the load forces preemptions; every token must still equal
    what the same prompts produce with plenty of cache, so recompute, paging and batching
    never corrupt a request's KV."""
    wl = short_trace(24, prompt_div=10, max_output=24).scale_rate(50.0)
    tight = runtime("vllm", blocks=30, virtual=True, max_num_batched_tokens=96)
    roomy = runtime("vllm", blocks=2048, virtual=True, max_num_batched_tokens=96)
    replay(tight, wl)
    replay(roomy, wl)
    assert tight.engine.stats.preemptions > 0
    assert roomy.engine.stats.preemptions == 0
    assert tight.engine.stats.finished == roomy.engine.stats.finished == 24
    for rid, job in roomy.engine.jobs.items():
        assert tight.engine.jobs[rid].output_ids == job.output_ids, rid


class Spy:
    """Wraps a policy and counts batches handed out."""

    def __init__(self, inner):
        self.inner, self.name, self.batches = inner, inner.name, 0

    def partition(self, view):
        return self.inner.partition(view)

    def next_batch(self, view, lane):
        batch = self.inner.next_batch(view, lane)
        if batch is not None and not batch.is_empty:
            self.batches += 1
        return batch


def test_the_policy_is_asked_before_every_iteration_even_for_steady_decodes():
    rt = runtime(virtual=True)
    spy = Spy(rt.engine.policy)
    rt.engine.policy = spy
    wl = short_trace(6, max_output=30)
    replay(rt, wl)
    assert spy.batches == rt.engine.stats.iterations
    assert rt.engine.stats.iterations >= int(wl.output_tokens.sum()) // 6


def job(rid, prompt=20, output=50):
    return Job(Request(rid, 0.0, prompt, output, prompt_ids=[rid % 200] * prompt))


def test_aborts_free_kv_whether_waiting_running_or_in_flight():
    rt = runtime(max_num_seqs=2)
    engine = rt.engine
    engine.arrive([job(0), job(1), job(2)])  # 0 and 1 are admitted, 2 waits
    assert engine.in_flight and engine.waiting == [engine.jobs[2].request]
    engine.abort(2)
    assert engine.jobs[2].request.status is Status.ABORTED and not engine.waiting
    engine.abort(0)  # in flight: dropped when the batch completes
    assert engine.jobs[0].request.status is Status.RUNNING
    for lane in engine.ready_lanes():
        engine.complete(lane)
    assert engine.jobs[0].request.status is Status.ABORTED
    assert engine.kv.held(0) == 0 and engine.jobs[0].finish_reason == "abort"
    for lane in engine.ready_lanes():
        engine.complete(lane)
    engine.abort(1)  # running between batches
    while engine.in_flight:
        for lane in engine.ready_lanes():
            engine.complete(lane)
    assert engine.kv.free_blocks == engine.kv.num_blocks
    assert engine.stats.aborted == 3


def test_requests_that_can_never_fit_are_rejected_like_the_simulator():
    rt = runtime(blocks=4)  # 64 tokens of KV
    rt.engine.arrive([job(0, prompt=60, output=10), job(1, prompt=10, output=5)])
    while rt.engine.in_flight:
        for lane in rt.engine.ready_lanes():
            rt.engine.complete(lane)
    assert rt.engine.jobs[0].request.status is Status.REJECTED
    assert rt.engine.jobs[1].request.status is Status.FINISHED


class BadSplit:
    name = "bad-split"

    def partition(self, view):
        return Partition.split(100, 31)

    def next_batch(self, view, lane):
        return None


def test_an_invalid_partition_from_the_policy_is_an_engine_error():
    rt = runtime()
    rt.engine.policy = BadSplit()
    with pytest.raises(EngineError, match="not a valid partition"):
        rt.engine.arrive(make_jobs(short_trace(1), 256))


def test_policy_names_resolve_through_the_registry():
    rt = runtime("static-split", decode_sms=64)
    assert rt.engine.policy.params == policies.get("static-split", decode_sms=64).params
