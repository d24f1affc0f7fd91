"""Nexus (arXiv 2507.06608) on hand-built engine states: each rule of its section 4 and Alg. 1."""

import pytest

import policies
from policies import BatchShape, GpuSpec, KVCache, Lane, Request, Status
from policies.nexus import NexusCostModel, NexusPolicy, RooflineCache
from tests.policies.policy_views import decoding, make_view


@pytest.fixture(scope="module")
def model():
    from profiler import DatasheetModel, load_model_config

    return DatasheetModel(load_model_config("llama-3.1-8b"))


def nexus_state(kv_used_fraction=0.0, decoders=64, ctx=2000, prompt=6000):
    kv = KVCache(20_000, 16)
    running = [decoding(i, kv, ctx) for i in range(decoders)]
    filler = int(kv_used_fraction * kv.num_blocks) - kv.used_blocks
    if filler > 0:
        kv.grow(-1, filler * 16)
    waiting = [Request(100 + i, 0.0, prompt, 50) for i in range(2)]
    return kv, running, waiting


def cost_of(model, pol, view):
    prefill, decode = pol.pending_work(view)
    return NexusCostModel(model, decode, prefill)


def scan(model, cm, decode_priority):
    """Every valid split's (decode SMs, holds, objective), by brute force."""
    n, rows = model.gpu.num_sms, []
    for d in model.gpu.decode_sm_options():
        t_p, t_d = cm.latencies(d, n - d)
        if decode_priority:
            rows.append((d, t_p <= 1.3 * cm.prefill_all * (1 + 1e-12), t_d))
        else:
            rows.append((d, t_d <= 1.1 * cm.decode_all * (1 + 1e-12), t_p))
    return rows


# ----------------------------------------------------------------------------- queue
def test_prefill_queue_ages_every_queued_prompt_admitted_or_new(model):
    """Section 4: score = remaining - 15 * age over ALL queued prompts, partial ones too."""
    kv = KVCache(20_000, 16)
    partial = Request(1, 0.0, 6000, 10, kv_tokens=2000, status=Status.RUNNING)
    kv.grow(1, 2000)
    split = model.gpu.split_with_decode(64)

    def view_at(now):
        short = Request(2, now - 1.0, 300, 10)  # arrived a second ago
        return make_view(model, [short], [partial], kv, partition=split, now=now)

    def chunks(now, pol):
        batch = pol.next_batch(view_at(now), Lane.PREFILL)
        return [(c.request.id, c.start, c.length) for c in batch.prefill]

    nexus = policies.get("nexus", max_num_batched_tokens=2048)
    # Scores 4000 - 150 vs 300 - 15: the new short prompt goes ahead of the admitted one.
    assert chunks(10.0, nexus) == [(2, 0, 300), (1, 2000, 1748)]
    # Aged 300 s, the partial prompt's score (4000 - 4500) beats the short one's (300 - 15).
    assert chunks(300.0, nexus)[0] == (1, 2000, 2048)
    # Shapes the planner weighs follow the same order.
    view = view_at(10.0)
    prefill, _ = nexus.pending_work(view)
    assert prefill.prefill_q == (300, 1748) and prefill.prefill_ctx == (0, 2000)


def test_aging_orders_new_prompts_as_the_paper_scores_them(model):
    def order(short_arrival, pol):
        long_old = Request(1, 0.0, 2000, 10)
        short_new = Request(2, short_arrival, 100, 10)
        view = make_view(model, [long_old, short_new], now=short_arrival + 1.0)
        return [r.id for r in pol.order_waiting(view)]

    # A 10 s head start is worth 150 tokens (< 1900); a 200 s one, 3000 tokens (> 1900).
    assert order(10.0, policies.get("nexus")) == [2, 1]
    assert order(200.0, policies.get("nexus")) == [1, 2]
    assert order(200.0, policies.get("nexus", aging=0.0)) == [2, 1]


def test_new_prompts_stop_at_the_first_that_does_not_fit_but_admitted_ones_continue(model):
    kv = KVCache(200, 16)  # 3200 tokens
    partial = Request(1, 0.0, 2000, 10, kv_tokens=1000, status=Status.RUNNING)
    kv.grow(1, 1000)
    big = Request(2, 0.0, 900, 10)
    small = Request(3, 0.0, 3000, 10)
    view = make_view(model, [big, small], [partial], kv, partition=model.gpu.split_with_decode(64))
    batch = policies.get("nexus").next_batch(view, Lane.PREFILL)
    # Order by remaining: big (900), partial (1000), small (3000, does not fit: skipped).
    assert [(c.request.id, c.length) for c in batch.prefill] == [(2, 900), (1, 1000)]


# ----------------------------------------------------------------------------- cost model
def test_contention_slows_decode_attention_only_with_byte_shares(model):
    """B_eff = B [P_attn m_d/(m_d+m_p1) + (1-P_attn) m_d/(m_d+m_p2)], m = bytes moved."""
    decode = BatchShape.decode(64, 64 * 2000)
    prefill = BatchShape.prefill(2048, 8000)
    n, d_sms, p_sms = model.gpu.num_sms, 64, 68
    cm = NexusCostModel(model, decode, prefill)
    roof_all = model.op_roofline(prefill, n)
    busy_all = sum(max(c, m) for c, m in roof_all.values())
    p_attn = max(roof_all["attn_prefill"]) / busy_all
    pb, db = model.op_bytes(prefill), model.op_bytes(decode)
    m_d, m_p1 = db["attn_decode"], pb["attn_prefill"]
    m_p2 = sum(pb.values()) - m_p1
    share = p_attn * m_d / (m_d + m_p1) + (1 - p_attn) * m_d / (m_d + m_p2)
    assert cm.share == pytest.approx(share) and 0 < share < 1
    t_p, t_d = cm.latencies(d_sms, p_sms)
    assert t_p == pytest.approx(model.predict(prefill, p_sms))
    alone = model.op_times(decode, d_sms)
    slowed = model.op_times(decode, d_sms, share)
    # Only the attention term changes: GEMMs and elementwise ops keep their alone time.
    expected = model.predict(decode, d_sms) - alone["attn_decode"] + slowed["attn_decode"]
    assert t_d == pytest.approx(expected)
    assert t_d > model.predict(decode, d_sms)
    # No prefill beside it: decode runs alone.
    assert NexusCostModel(model, decode, BatchShape()).latencies(d_sms, p_sms) == (
        0.0,
        model.predict(decode, d_sms),
    )


def test_decode_bound_comes_from_the_same_cost_model_as_the_candidates(model):
    """Alg. 1: T_dec^opt = CostModel(decode, 100%), contention included, not decode alone."""
    decode = BatchShape.decode(64, 64 * 2000)
    prefill = BatchShape.prefill(4096, 0)
    cm = NexusCostModel(model, decode, prefill)
    n = model.gpu.num_sms
    assert cm.decode_all == pytest.approx(cm.decode_time(n))
    assert cm.decode_all > model.predict(decode, n)  # the contention is in the bound too
    assert cm.prefill_all == pytest.approx(model.predict(prefill, n))


def test_prefill_priority_gets_more_sms_than_a_bound_without_contention_allows(model):
    """The divergence fixed: a contention-free bound made decode eat the 10% slack."""
    kv, running, waiting = nexus_state()
    pol = policies.get("nexus")
    part = pol.plan_split(make_view(model, waiting, running, kv))
    cm = cost_of(model, pol, make_view(model, waiting, running, kv, partition=part))
    n = model.gpu.num_sms
    options = model.gpu.decode_sm_options()
    alone_bound = 1.1 * model.predict(cm.decode, n)
    # With that bound the search would end on the most decode SMs it can give (none holds).
    mismatched = min(
        (d for d in options if cm.latencies(d, n - d)[1] <= alone_bound), default=options[-1]
    )
    assert part.decode_sms < mismatched
    assert cm.latencies(part.decode_sms, part.prefill_sms)[1] <= 1.1 * cm.decode_all * (1 + 1e-9)


@pytest.mark.parametrize("kv_used", [0.2, 0.8])
def test_objective_follows_kv_usage_and_finds_the_constrained_optimum(model, kv_used):
    """Below 70% KV: fastest prefill with decode <= 1.1x; above: fastest decode, prefill <= 1.3x."""
    pol = policies.get("nexus")
    kv, running, waiting = nexus_state(kv_used)
    part = pol.plan_split(make_view(model, waiting, running, kv))
    assert part.is_split and model.gpu.is_valid(part)
    cm = cost_of(model, pol, make_view(model, waiting, running, kv, partition=part))
    rows = scan(model, cm, decode_priority=kv_used >= 0.7)
    best = min((obj, d) for d, ok, obj in rows if ok)
    assert part.decode_sms == best[1]


# ----------------------------------------------------------------------------- search
def test_search_lowers_until_the_constraint_holds_then_raises_while_it_holds(model):
    kv, running, waiting = nexus_state()
    pol = policies.get("nexus", hysteresis=0.0)
    cm = cost_of(model, pol, make_view(model, waiting, running, kv))
    rows = {d: ok for d, ok, _ in scan(model, cm, decode_priority=False)}
    boundary = min(d for d, ok in rows.items() if ok)  # fewest decode SMs that still hold
    options = model.gpu.decode_sm_options()
    for start in (options[0], boundary, options[-1]):
        view = make_view(model, waiting, running, kv, partition=model.gpu.split_with_decode(start))
        assert pol.plan_split(view).decode_sms == boundary


def test_search_steps_are_one_percent_rounded_to_the_splits_the_gpu_can_make():
    h100 = GpuSpec("h100", 132, 8, 80 * 10**9)
    opts = h100.decode_sm_options()
    step = 0.01 * 132
    i = opts.index(64)
    assert opts[NexusPolicy._neighbour(opts, i, 1, step)] == 68  # 8-SM groups: every 4 SMs
    assert opts[NexusPolicy._neighbour(opts, i, -1, step)] == 60
    ada = GpuSpec("l20", 92, 2, 48 * 10**9, min_split_sms=4)
    opts = ada.decode_sm_options()
    i = opts.index(40)
    assert opts[NexusPolicy._neighbour(opts, i, 1, 0.01 * 92)] == 42  # finer where allowed
    assert NexusPolicy._neighbour(opts, len(opts) - 1, 1, 1.0) is None


def test_a_new_split_applies_only_when_the_share_moves_more_than_delta(model):
    kv, running, waiting = nexus_state()
    free = policies.get("nexus", hysteresis=0.0)
    best = free.plan_split(make_view(model, waiting, running, kv)).decode_sms
    near = model.gpu.split_with_decode(best + 4)  # one step away: 4 of 132 SMs = 3%
    view = make_view(model, waiting, running, kv, partition=near)
    assert free.plan_split(view).decode_sms == best
    assert policies.get("nexus", hysteresis=0.05).plan_split(view) == near
    far = model.gpu.split_with_decode(best + 40)
    view = make_view(model, waiting, running, kv, partition=far)
    assert policies.get("nexus", hysteresis=0.05).plan_split(view).decode_sms == best


def test_decode_lane_preempts_the_newest_request(model):
    kv = KVCache(12, 16)
    old = decoding(1, kv, 96)
    new = decoding(2, kv, 96)  # 12 blocks held, both need a 13th
    part = model.gpu.split_with_decode(48)
    batch = policies.get("nexus").next_batch(
        make_view(model, (), [old, new], kv, partition=part), Lane.DECODE
    )
    assert [r.id for r in batch.preempt] == [2] and [r.id for r in batch.decode] == [1]


def test_the_prefill_costs_are_kept_between_plans_and_answer_the_same(model):
    from profiler import DatasheetModel, load_model_config

    prefill = BatchShape.prefill(2048, 8000)
    cache = RooflineCache()
    for ctx in (1000, 1500, 2000):  # one running prefill batch, decoders that grow
        decode = BatchShape.decode(32, 32 * ctx)
        cached = NexusCostModel(model, decode, prefill, cache)
        fresh = NexusCostModel(model, decode, prefill)
        for d in model.gpu.decode_sm_options():
            assert cached.latencies(d, model.gpu.num_sms - d) == pytest.approx(
                fresh.latencies(d, model.gpu.num_sms - d), rel=1e-12
            )
    assert {shape for shape, _ in cache._roofs} == {prefill}  # decode shapes are not kept
    other = DatasheetModel(load_model_config("qwen3-8b"))
    cache.bind(other)  # another latency model starts afresh
    assert not cache._roofs and not cache._alone


def test_a_gpu_with_no_valid_split_is_a_one_line_error(model):
    import dataclasses

    tiny = GpuSpec("one-group", 8, 8, 80 * 10**9)
    view = dataclasses.replace(
        make_view(model, waiting=[Request(0, 0.0, 100, 10)]),
        gpu=tiny,
        partition=tiny.aggregated(),
    )
    with pytest.raises(policies.PolicyError, match="no valid split") as err:
        NexusPolicy(policies.params_class("nexus")()).partition(view)
    assert "\n" not in str(err.value)
