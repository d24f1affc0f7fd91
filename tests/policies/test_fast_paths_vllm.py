"""vLLM's decision fast paths decide what the plain plan decides, on random engine states.

``VllmPolicy.next_batch`` takes the whole decode set at once when nothing is left to prefill
and every decode's block fits (``KVBudget.grant_decodes``), and ``KVBudget.try_admit`` checks a
new request's blocks in one pass; the reference below plans every decode through the
request-by-request walk, as a policy overriding ``plan_decodes`` would be; a split lane's
``decode_only_batch`` takes the same fast path for every policy that has one. The base
``partition`` hands back the aggregated partition in force instead of building it anew.
"""

import copy
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

import policies
from policies import Lane, Partition, Request
from policies.base import SchedulingPolicy
from policies.vllm import VllmParams, VllmPolicy
from tests.policies.policy_views import make_view
from tests.policies.test_fast_paths import engine_states, model


class WalkingVllm(VllmPolicy):
    """vLLM planning every decode request by request (``plan_decodes_reference``)."""

    def plan_decodes(self, view, requests, kv, preempted, scheduled):
        return SchedulingPolicy.plan_decodes_reference(
            self, view, requests, kv, preempted, scheduled
        )


def summary(batch):
    if batch is None:
        return None
    flags = (batch.steady_steps, batch.through_arrivals, batch.arrivals_queue, batch.past_finishes)
    return batch.describe(), flags, summary(batch.then)


@settings(max_examples=400, deadline=None)
@given(
    state=st.one_of(engine_states(), engine_states(spare=400)),
    prompts=st.lists(st.integers(1, 400), max_size=4),
    tokens=st.integers(1, 600),
    seqs=st.integers(1, 30),
    watermark=st.sampled_from([0.0, 0.01, 0.2]),
)
def test_vllm_next_batch_equals_planning_request_by_request(
    state, prompts, tokens, seqs, watermark
):
    kv, running = state
    waiting = [Request(1000 + i, 0.0, p, 20) for i, p in enumerate(prompts)]
    view = make_view(model(), waiting=waiting, running=running, kv=kv)
    params = VllmParams(max_num_batched_tokens=tokens, max_num_seqs=seqs, watermark=watermark)
    fast = VllmPolicy(params).next_batch(view, Lane.MIXED)
    assert WalkingVllm(params).plans_decodes_plainly() is False
    assert summary(fast) == summary(WalkingVllm(params).next_batch(view, Lane.MIXED))


@settings(max_examples=300, deadline=None)
@given(state=engine_states(), data=st.data())
def test_grant_decodes_is_try_grow_for_each_or_nothing(state, data):
    kv, reqs = state
    reqs = [r for r in reqs if not r.in_flight]
    budget = kv.budget()
    for r in reqs:  # a budget fresh or already planning some growths and preemptions
        if data.draw(st.integers(0, 4)) == 0:
            budget.try_grow(r.id, r.kv_tokens + data.draw(st.integers(1, 20)))
        elif data.draw(st.integers(0, 6)) == 0:
            budget.release(r.id)
    one_by_one = copy.deepcopy(budget)
    fits = all([one_by_one.try_grow(r.id, r.kv_tokens + 1) for r in reqs])
    before = (budget.free, dict(budget._extra))
    assert budget.grant_decodes(reqs) is fits
    after = (one_by_one.free, one_by_one._extra) if fits else before
    assert (budget.free, budget._extra) == after


@settings(max_examples=300, deadline=None)
@given(
    state=engine_states(spare=60),
    prompt=st.integers(1, 400),
    reserve=st.integers(0, 30),
)
def test_try_admit_without_a_cached_prefix_checks_need_and_reserve(state, prompt, reserve):
    kv, _ = state
    budget = kv.budget()
    req = Request(1000, 0.0, prompt, 20)
    need = budget.need(req.id, prompt)
    fits = need + reserve <= budget.free
    free = budget.free
    assert budget.try_admit(req, 0, prompt, reserve) is fits
    assert budget.free == (free - need if fits else free)
    assert budget.held(req.id) == (need if fits else 0)


@settings(max_examples=200, deadline=None)
@given(
    sms=st.integers(1, 200),
    mixed=st.integers(0, 210),
    prefill=st.integers(0, 3),
    decode=st.integers(0, 3),
)
def test_base_partition_is_the_gpus_aggregated_one(sms, mixed, prefill, decode):
    """The partition in force is handed back only when it equals a new aggregated one."""
    gpu = replace(model().gpu, num_sms=sms, sm_granularity=1, min_split_sms=1)
    now = Partition(mixed_sms=mixed, prefill_sms=prefill, decode_sms=decode)
    view = make_view(model(), partition=now)
    view.gpu = gpu
    assert SchedulingPolicy(None).partition(view) == gpu.aggregated()
    mixed_now = Partition.aggregated(sms)
    view.partition = mixed_now
    assert SchedulingPolicy(None).partition(view) is mixed_now


def walking(cls):
    """``cls`` planning every decode request by request (``plan_decodes_reference``)."""
    return type(f"Walking{cls.__name__}", (cls,), {"plan_decodes": WalkingVllm.plan_decodes})


@settings(max_examples=200, deadline=None)
@given(
    state=st.one_of(engine_states(), engine_states(spare=400)),
    name=st.sampled_from(["nexus", "duetserve", "static-split", "disagg", "vllm"]),
    prompts=st.lists(st.integers(1, 400), max_size=3),
)
def test_decode_only_batch_equals_planning_request_by_request(state, name, prompts):
    kv, running = state
    waiting = [Request(1000 + i, 0.0, p, 20) for i, p in enumerate(prompts)]
    view = make_view(model(), waiting=waiting, running=running, kv=kv)
    fast = policies.get(name)
    reference = walking(type(fast))(fast.params)
    assert fast.plans_decodes_plainly() and not reference.plans_decodes_plainly()
    assert summary(fast.decode_only_batch(view)) == summary(reference.decode_only_batch(view))
