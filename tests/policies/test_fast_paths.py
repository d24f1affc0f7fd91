"""The policies' fast paths decide exactly what their plain definitions decide, on random states.

Each fast path (``plan_decodes`` granting a whole decode set, ``KVCache.grow_decodes`` taking
the blocks of many requests at once, SGLang's bisected ``steady_limit`` and one-grant decode
step) is compared with the request-by-request reference on states hypothesis draws: full and
nearly full KV pools, requests holding more blocks than they need, planned and preempted
requests handed in, cached and stale blocks in the prefix cache's free queue.
"""

import copy
import dataclasses
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policies
from policies import Batch, BatchShape, KVCache, Request, Status
from policies.batch import UNTIL_CHANGE
from policies.block_hash import private_hashes
from policies.prefix_cache import PrefixKVCache
from policies.sglang import SglangParams, SglangPolicy
from tests.policies.policy_views import make_view


@cache
def model():
    from profiler import DatasheetModel, load_model_config

    return DatasheetModel(load_model_config("llama-3.1-8b"))


@st.composite
def engine_states(draw, prefix=None, spare=0):
    """A KV cache with running requests (decoding and prefilling) holding blocks in it: its
    free pool a few blocks (often too few for the next decode step), or up to ``spare``."""
    bs = draw(st.sampled_from([1, 4, 16]))
    n = draw(st.integers(0, 24))
    reqs, held = [], []
    for rid in range(n):
        prompt = draw(st.integers(1, 120))
        decoding = draw(st.booleans())
        generated = draw(st.integers(1, 60)) if decoding else 0
        kv_tokens = prompt + generated - 1 if decoding else draw(st.integers(0, prompt - 1))
        r = Request(
            rid,
            0.0,
            prompt,
            generated + draw(st.integers(1, 300)),
            kv_tokens=kv_tokens,
            generated=generated,
            status=Status.RUNNING,
            in_flight=draw(st.integers(0, 5)) == 0,
        )
        reqs.append(r)
        # Mostly exactly the blocks it needs; sometimes more (grown ahead).
        held.append(-(-kv_tokens // bs) + (draw(st.integers(0, 2)) if draw(st.booleans()) else 0))
    free = draw(st.integers(0, max(2, n // 2, spare)))
    use_prefix = draw(st.booleans()) if prefix is None else prefix
    kv = (PrefixKVCache if use_prefix else KVCache)(max(1, sum(held) + free), bs)
    for r, h in zip(reqs, held, strict=True):
        if h:
            kv.grow(r.id, h * bs)
    order = draw(st.permutations(reqs))
    return kv, list(order)


def policy(name):
    return policies.get(name)


def plan_both(pol, view, requests, pre):
    """Run the fast and the reference plan on twin budgets from the same cache."""
    out = []
    for plan in (pol.plan_decodes, pol.plan_decodes_reference):
        kv = view.kv.budget()
        preempted = [view.running[i] for i in pre["preempted"]]
        scheduled = {view.running[i].id for i in pre["scheduled"]}
        for i in pre["planned"]:
            r = view.running[i]
            kv.try_grow(r.id, r.kv_tokens + 1)
        chosen = plan(view, requests, kv, preempted, scheduled)
        ids = [r.id for r in chosen], [r.id for r in preempted], sorted(scheduled)
        out.append((*ids, kv.free, kv._extra))
    return out


@settings(max_examples=300, deadline=None)
@given(
    state=engine_states(),
    name=st.sampled_from(["vllm", "sglang"]),
    data=st.data(),
)
def test_plan_decodes_equals_the_request_by_request_walk(state, name, data):
    kv, running = state
    view = make_view(model(), running=running, kv=kv)
    idx = st.lists(st.integers(0, len(running) - 1), max_size=3) if running else st.just([])
    pre = {"preempted": [], "scheduled": [], "planned": []}
    if data.draw(st.booleans()):
        pre = {key: data.draw(idx) for key in pre}
    requests = view.decoding
    if requests and data.draw(st.integers(0, 9)) == 0:
        requests = [*requests, requests[0]]  # a request listed twice is planned once
    fast, reference = plan_both(policy(name), view, requests, pre)
    assert fast == reference


def test_plan_decodes_grants_a_fitting_set_and_preempts_newest_first_when_not():
    def plan(num_blocks):
        kv = KVCache(num_blocks, 4)
        running = []
        for rid in range(3):  # each at a block boundary: its next token needs a new block
            running.append(Request(rid, 0.0, 8, 50, kv_tokens=8, generated=1))
            running[-1].status = Status.RUNNING
            kv.grow(rid, 8)
        view = make_view(model(), running=running, kv=kv)
        budget, preempted = kv.budget(), []
        chosen = policy("vllm").plan_decodes(view, view.decoding, budget, preempted, set())
        return [r.id for r in chosen], [r.id for r in preempted], budget.free

    assert plan(9) == ([0, 1, 2], [], 0)  # three blocks free: all granted
    assert plan(7) == ([0, 1], [2], 1)  # one free: the newest makes room for the second


@st.composite
def prefix_cache_with_history(draw):
    """A small prefix cache whose free queue holds cached (named) blocks and stale entries."""
    bs = draw(st.sampled_from([1, 4]))
    kv = PrefixKVCache(draw(st.integers(8, 40)), bs)
    live = []
    for rid in range(draw(st.integers(0, 12))):
        r = Request(rid, 0.0, draw(st.integers(1, 6)) * bs, 10, status=Status.RUNNING)
        if kv.free_blocks < r.prompt_tokens // bs:
            break
        r.block_hashes = private_hashes(r, r.prompt_tokens // bs)
        kv.grow(r.id, r.prompt_tokens)
        r.kv_tokens = r.prompt_tokens
        kv.commit(r, r.prompt_tokens)
        live.append(r)
        if draw(st.booleans()):  # finished: its named blocks wait in the free queue, cached
            kv.free(r.id)
            live.pop()
            if draw(st.booleans()):  # found again by a new request: a stale queue entry
                again = Request(100 + rid, 0.0, r.prompt_tokens + bs, 10, status=Status.RUNNING)
                again.block_hashes = r.block_hashes
                kv.admit(again, len(kv.match(again.block_hashes, r.prompt_tokens // bs)) * bs)
                live.append(again)
    return kv, live


def blocks_to_grow(kv, reqs, steps):
    bs = kv.block_size
    return sum(max(0, -(-(r.kv_tokens + steps) // bs) - kv.held(r.id)) for r in reqs)


def assert_grows_as_one_by_one(kv, reqs, steps: int) -> None:
    """``grow_decodes`` leaves the cache as growing each request on its own does."""
    one_by_one = copy.deepcopy(kv)
    for r in reqs:
        one_by_one.grow(r.id, r.kv_tokens + steps)
    kv.grow_decodes(reqs, steps)
    assert cache_state(kv) == cache_state(one_by_one)


@settings(max_examples=300, deadline=None)
@given(state=st.one_of(engine_states(), prefix_cache_with_history()), data=st.data())
def test_grow_decodes_allocates_what_growing_one_by_one_does(state, data):
    kv, reqs = state
    reqs = data.draw(st.permutations([r for r in reqs if not r.in_flight]))
    reqs = reqs[: data.draw(st.integers(0, len(reqs)))]
    steps = data.draw(st.integers(1, 40))
    while steps > 1 and blocks_to_grow(kv, reqs, steps) > kv.free_blocks:
        steps -= 1  # the most steps that fit: growth reaches deep into the free queue
    if blocks_to_grow(kv, reqs, steps) > kv.free_blocks:
        return
    assert_grows_as_one_by_one(kv, reqs, steps)


@settings(max_examples=200, deadline=None)
@given(state=engine_states(spare=400), data=st.data())
def test_grow_decodes_by_one_a_few_or_many_steps_allocates_what_growing_one_by_one_does(
    state, data
):
    """Each of the regimes ``grow_decodes`` filters differently: one step (block boundaries),
    fewer steps than a block holds, a block or more; the pool is large enough for all."""
    kv, reqs = state
    reqs = [r for r in reqs if not r.in_flight]
    bs = kv.block_size
    regime = data.draw(st.sampled_from(["one", "under a block", "a block or more"]))
    if regime == "one":
        steps = 1
    elif regime == "under a block":
        steps = data.draw(st.integers(min(2, bs), max(1, bs - 1)))
    else:
        steps = data.draw(st.integers(bs, 3 * bs))
    if blocks_to_grow(kv, reqs, steps) > kv.free_blocks:
        return
    assert_grows_as_one_by_one(kv, reqs, steps)


@settings(max_examples=300, deadline=None)
@given(state=st.one_of(engine_states(), prefix_cache_with_history()), data=st.data())
def test_decode_needs_are_the_blocks_each_next_token_takes(state, data):
    """``decode_needs`` equals asking ``need`` request by request, on a fresh budget and on
    one that already planned growths and preemptions."""
    kv, reqs = state
    reqs = [r for r in reqs if not r.in_flight]
    budget = kv.budget()
    for r in reqs:
        if data.draw(st.integers(0, 4)) == 0:
            budget.try_grow(r.id, r.kv_tokens + data.draw(st.integers(1, 20)))
        elif data.draw(st.integers(0, 6)) == 0:
            budget.release(r.id)
    expected = {r.id: n for r in reqs if (n := budget.need(r.id, r.kv_tokens + 1))}
    assert budget.decode_needs(reqs) == expected


@settings(max_examples=100, deadline=None)
@given(state=st.one_of(engine_states(), prefix_cache_with_history()), data=st.data())
def test_room_is_each_requests_unfilled_block_tokens(state, data):
    kv, reqs = state
    reqs = data.draw(st.permutations(reqs))
    if reqs and data.draw(st.booleans()):  # one holding no block yet (waiting)
        reqs = [*reqs, Request(999, 0.0, 5, 5)]
    bs = kv.block_size
    assert kv.room(reqs) == [kv.held(r.id) * bs - r.kv_tokens for r in reqs]


def cache_state(kv):
    state = {"tables": kv._tables, "free": kv.free_blocks}
    if isinstance(kv, PrefixKVCache):
        state |= {
            "queue": kv._fifo[kv._head :],
            "stale": kv._stale,
            "refs": kv._refs,
            "cached": kv._cached,
            "stats": kv.stats,
        }
    else:
        state["stack"] = kv._free
    return state


# ----------------------------------------------------------------- SGLang
def steady_limit_by_every_step(pol, view):
    """SGLang's steady-decode promise evaluated at every step of the horizon (numpy)."""
    if not view.waiting:
        return UNTIL_CHANGE
    p = pol.params
    head = view.waiting[0]
    need = head.prefill_target - view.kv.budget().prefix_hit(head) + pol._clipped(head)
    clipped = np.fromiter((pol._clipped(r) for r in view.running if not r.is_prefilling), np.int64)
    horizon = int(clipped.max(initial=0)) + p.new_token_ratio_decay_steps + 1
    k = np.arange(1, horizon + 1)
    ratio = np.maximum(pol.new_token_ratio(view) - p.decay * k, p.min_new_token_ratio)
    left = np.maximum(clipped[:, None] - k[None, :], 0).sum(axis=0) if clipped.size else 0
    room = view.kv.free_blocks * view.kv.block_size - ratio * left
    opens = np.flatnonzero(room > need)
    return int(k[opens[0]]) if opens.size else horizon


sglang_params = st.builds(
    SglangParams,
    init_new_token_ratio=st.floats(0.0, 1.0),
    min_new_token_ratio_factor=st.floats(0.0, 1.0),
    new_token_ratio_decay_steps=st.integers(1, 700),
    clip_max_new_tokens=st.integers(1, 400),
)


@settings(max_examples=300, deadline=None)
@given(
    state=engine_states(prefix=False, spare=400),
    params=sglang_params,
    decode_steps=st.integers(0, 3000),
    anchor_ratio=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_sglang_steady_limit_bisects_to_the_first_step_that_opens(
    state, params, decode_steps, anchor_ratio, data
):
    kv, running = state
    pol = SglangPolicy(params)
    pol._anchor_steps, pol._anchor_ratio = decode_steps // 2, anchor_ratio
    # A head whose demand lies between the room now and the room once every output is done,
    # so that the queue opens somewhere inside the horizon (or exactly at its ends).
    reserved = sum(pol._clipped(r) for r in running if not r.is_prefilling)
    room = kv.free_blocks * kv.block_size
    demand = data.draw(st.integers(max(2, room - reserved - 2), max(2, room + 2)))
    output = data.draw(st.integers(1, demand - 1))
    head = Request(999, 0.0, demand - min(output, params.clip_max_new_tokens), output)
    waiting = [head] if data.draw(st.integers(0, 9)) else []
    view = make_view(model(), running=running, kv=kv, waiting=waiting)
    view.decode_steps = decode_steps
    batch = Batch(decode=view.decoding)
    assert pol.steady_limit(view, batch) == steady_limit_by_every_step(pol, view)


def sglang_decode_batch_by_request(pol, view):
    """SGLang's decode step as first written: every request's block through ``try_grow``."""
    decoding = view.decoding
    if not decoding:
        return None
    kv = view.kv.budget()
    retracted = []
    if sum(kv.need(r.id, r.kv_tokens + 1) for r in decoding) > kv.free:
        retracted = pol._retract(view, decoding, kv)
    keep = [r for r in decoding if r not in retracted]
    for r in keep:
        assert kv.try_grow(r.id, r.kv_tokens + 1)
    batch = Batch(decode=keep, preempt=retracted)
    if batch.is_empty and not retracted:
        return None
    return pol.steady(batch, view)


@settings(max_examples=200, deadline=None)
@given(state=engine_states(), params=sglang_params, head_prompt=st.integers(1, 400))
def test_sglang_decode_step_equals_granting_request_by_request(state, params, head_prompt):
    kv, running = state
    view = make_view(model(), running=running, kv=kv, waiting=[Request(999, 0.0, head_prompt, 9)])
    results = []
    for decide in (SglangPolicy.decode_batch, sglang_decode_batch_by_request):
        pol = SglangPolicy(params)
        batch = decide(pol, view)
        summary = None if batch is None else (batch.describe(), batch.steady_steps)
        results.append((summary, pol._anchor_steps, pol._anchor_ratio))
    assert results[0] == results[1]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 40), st.integers(0, 60), st.booleans()), min_size=0, max_size=30
    ),
    st.booleans(),
)
def test_running_phases_in_one_pass_equal_the_two_filters(states, none_in_flight):
    running = []
    for rid, (target, kv_tokens, in_flight) in enumerate(states):
        req = Request(rid, 0.0, target, 50, kv_tokens=kv_tokens, status=Status.RUNNING)
        req.in_flight = in_flight and not none_in_flight
        running.append(req)
    view = make_view(model(), running=running)
    prefilling, decoding = view.phases()
    assert prefilling == view.prefilling and decoding == view.decoding


@given(st.integers(0, 4096), st.integers(0, 1 << 40))
def test_a_decode_shape_filled_by_its_slots_is_the_dataclass_one(n_decode, ctx_sum):
    fast = BatchShape.decode(n_decode, ctx_sum)
    built = BatchShape(n_decode=n_decode, decode_ctx_sum=ctx_sum, sampled=n_decode)
    # Every field, by name: a field added to BatchShape and not filled here fails this.
    for f in dataclasses.fields(BatchShape):
        assert getattr(fast, f.name) == getattr(built, f.name), f.name
    assert fast == built and hash(fast) == hash(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.n_decode = 1
