"""Decisions of the paper policies on hand-built engine states."""

import pytest

import policies
from policies import (
    Batch,
    BatchShape,
    EngineView,
    KVCache,
    Lane,
    Partition,
    PrefillChunk,
    Request,
    Slo,
    Status,
)
from policies.nexus import ContentionModel, RooflineCache


@pytest.fixture(scope="module")
def model():
    from profiler import DatasheetModel, load_model_config

    return DatasheetModel(load_model_config("llama-3.1-8b"))


def make_view(
    model,
    waiting=(),
    running=(),
    kv=None,
    partition=None,
    in_flight=None,
    now=0.0,
    slo=Slo(),
):
    return EngineView(
        now=now,
        waiting=list(waiting),
        running=list(running),
        kv=kv or KVCache(20_000, 16),
        partition=partition or model.gpu.aggregated(),
        in_flight=in_flight or {},
        slo=slo,
        model=model,
        gpu=model.gpu,
    )


def decoding(rid, kv, ctx, out=200, generated=1):
    r = Request(rid, 0.0, ctx, out, generated=generated, kv_tokens=ctx, status=Status.RUNNING)
    kv.grow(rid, ctx)
    return r


def valid(model, part: Partition) -> bool:
    return model.gpu.is_valid(part)


# ----------------------------------------------------------------------------- sglang
def test_sglang_runs_new_prefills_before_decodes_when_they_fit(model):
    kv = KVCache(1000, 16)
    running = [decoding(i, kv, 100) for i in range(3)]
    waiting = [Request(10, 0.0, 500, 10)]
    batch = policies.get("sglang").next_batch(make_view(model, waiting, running, kv), Lane.MIXED)
    assert [c.request.id for c in batch.prefill] == [10] and batch.decode == []


def test_sglang_decodes_when_the_prompt_would_eat_the_decode_reserve(model):
    kv = KVCache(100, 16)  # 1600 tokens; 3 x 100 held
    running = [decoding(i, kv, 100, out=2000) for i in range(3)]
    waiting = [Request(10, 0.0, 600, 10)]
    view = make_view(model, waiting, running, kv)
    # Reserve 0.5 x ~6000 remaining output tokens: the prompt does not fit beside it.
    held = {"min_new_token_ratio_factor": 1.0}  # the ratio stays where it starts
    batch = policies.get("sglang", init_new_token_ratio=0.5, **held).next_batch(view, Lane.MIXED)
    assert batch.prefill == [] and [r.id for r in batch.decode] == [0, 1, 2]
    # The reserve shrinks by 0.5 x 3 tokens a step: 1264 free tokens exceed it and the
    # prompt's 610 after 1564 more steps, and not before.
    assert batch.steady_steps == 1564
    # With no reserve the same prompt is admitted first.
    batch = policies.get("sglang", init_new_token_ratio=0.0, **held).next_batch(view, Lane.MIXED)
    assert [c.request.id for c in batch.prefill] == [10]


def test_sglang_continues_a_chunked_prompt_before_admitting_new_ones(model):
    kv = KVCache(1000, 16)
    half = Request(5, 0.0, 10_000, 10, kv_tokens=8192, status=Status.RUNNING)
    kv.grow(5, 8192)
    waiting = [Request(6, 0.0, 100, 10)]
    batch = policies.get("sglang").next_batch(make_view(model, waiting, [half], kv), Lane.MIXED)
    assert [(c.request.id, c.start, c.length) for c in batch.prefill] == [
        (5, 8192, 1808),
        (6, 0, 100),
    ]


# ----------------------------------------------------------------------------- nexus
def test_nexus_prefill_queue_is_shortest_first_with_aging(model):
    pol = policies.get("nexus")

    def order(short_arrival, aging_pol=pol):
        long_old = Request(1, 0.0, 2000, 10)
        short_new = Request(2, short_arrival, 100, 10)
        view = make_view(model, [long_old, short_new], now=short_arrival + 1.0)
        return [r.id for r in aging_pol.order_waiting(view)]

    # score = remaining prompt - 15 * seconds waited: a 10 s head start is worth 150 tokens,
    # less than the 1900-token difference; a 200 s head start (3000 tokens) is worth more.
    assert order(10.0) == [2, 1]
    assert order(200.0) == [1, 2]
    assert order(200.0, policies.get("nexus", aging=0.0)) == [2, 1]


def nexus_state(model, kv_used_fraction=0.0, decoders=64, ctx=2000, prompt=6000):
    kv = KVCache(20_000, 16)
    running = [decoding(i, kv, ctx) for i in range(decoders)]
    filler = int(kv_used_fraction * kv.num_blocks) - kv.used_blocks
    if filler > 0:
        kv.grow(-1, filler * 16)
    waiting = [Request(100 + i, 0.0, prompt, 50) for i in range(2)]
    return kv, running, waiting


def test_nexus_split_meets_its_constraint_and_respects_the_hardware(model):
    kv, running, waiting = nexus_state(model)
    pol = policies.get("nexus")
    part = pol.partition(make_view(model, waiting, running, kv))
    assert part.is_split and valid(model, part)
    assert part.prefill_sms + part.decode_sms <= model.gpu.num_sms
    prefill, decode = pol.pending_work(make_view(model, waiting, running, kv, partition=part))
    cm = ContentionModel(model, decode, prefill)
    t_p, t_d = cm.latencies(part.decode_sms, part.prefill_sms)
    assert t_d <= 1.1 * cm.decode_all * (1 + 1e-9)
    # Prefill-priority: no valid split with a faster prefill also meets the decode bound.
    for d in model.gpu.decode_sm_options():
        tp, td = cm.latencies(d, model.gpu.num_sms - d)
        if td <= 1.1 * cm.decode_all:
            assert tp >= t_p * (1 - 1e-9)


def best_by_scan(model, cm, decode_priority):
    """The constrained optimum over every valid split, found by brute force."""
    n, best = model.gpu.num_sms, None
    for d in model.gpu.decode_sm_options():
        t_p, t_d = cm.latencies(d, n - d)
        ok = t_p <= 1.3 * cm.prefill_all if decode_priority else t_d <= 1.1 * cm.decode_all
        objective = t_d if decode_priority else t_p
        if ok and (best is None or objective < best[1]):
            best = (d, objective)
    return best


@pytest.mark.parametrize("kv_used", [0.2, 0.8])
def test_nexus_objective_follows_kv_usage(model, kv_used):
    """Below 70% KV: fastest prefill with decode <= 1.1x; above: fastest decode, prefill <= 1.3x."""
    pol = policies.get("nexus")
    kv, running, waiting = nexus_state(model, kv_used)
    part = pol.plan_split(make_view(model, waiting, running, kv))
    prefill, decode = pol.pending_work(make_view(model, waiting, running, kv, partition=part))
    cm = ContentionModel(model, decode, prefill)
    d, objective = best_by_scan(model, cm, decode_priority=kv_used >= 0.7)
    assert part.decode_sms == d
    t_p, t_d = cm.latencies(part.decode_sms, part.prefill_sms)
    assert (t_d if kv_used >= 0.7 else t_p) == pytest.approx(objective)


def test_nexus_hysteresis_keeps_a_split_that_is_nearly_as_good(model):
    kv, running, waiting = nexus_state(model)
    free = policies.get("nexus", hysteresis=0.0)
    best = free.plan_split(make_view(model, waiting, running, kv))
    # Start one step off the optimum on the feasible side (more decode SMs).
    options = model.gpu.decode_sm_options()
    near = next(d for d in options if d >= best.decode_sms + 8)
    start = model.gpu.split_with_decode(near)
    view = make_view(model, waiting, running, kv, partition=start)
    assert free.plan_split(view) == best
    sticky = policies.get("nexus", hysteresis=0.5)
    assert sticky.plan_split(view) == start


def test_nexus_walks_greedily_from_the_current_split(model):
    kv, running, waiting = nexus_state(model)
    pol = policies.get("nexus", hysteresis=0.0)
    prefill, decode = pol.pending_work(make_view(model, waiting, running, kv))
    cm = ContentionModel(model, decode, prefill)
    _, optimum = best_by_scan(model, cm, decode_priority=False)
    n = model.gpu.num_sms
    for start in (8, 124):
        view = make_view(model, waiting, running, kv, partition=model.gpu.split_with_decode(start))
        part = pol.plan_split(view)
        t_p, t_d = cm.latencies(part.decode_sms, part.prefill_sms)
        assert t_d <= 1.1 * cm.decode_all  # feasible
        # A local optimum in 8-SM steps, close to the global one.
        for d in (part.decode_sms - 8, part.decode_sms + 8):
            if d in model.gpu.decode_sm_options():
                tp, td = cm.latencies(d, n - d)
                assert td > 1.1 * cm.decode_all or tp >= t_p
        assert t_p <= 1.1 * optimum


def test_nexus_decode_lane_preempts_the_newest_request(model):
    kv = KVCache(12, 16)
    old = decoding(1, kv, 96)
    new = decoding(2, kv, 96)  # 12 blocks held, both need a 13th
    part = model.gpu.split_with_decode(48)
    batch = policies.get("nexus").next_batch(
        make_view(model, (), [old, new], kv, partition=part), Lane.DECODE
    )
    assert [r.id for r in batch.preempt] == [2] and [r.id for r in batch.decode] == [1]


def test_nexus_decode_bandwidth_is_weighted_by_prefill_attention_share(model):
    """B_eff = B [P_attn m_d/(m_d+m_p1) + (1-P_attn) m_d/(m_d+m_p2)], with m as byte rates."""
    decode = BatchShape.decode(64, 64 * 2000)
    prefill = BatchShape.prefill(2048, 8000)
    d_sms, p_sms = 64, 68
    cm = ContentionModel(model, decode, prefill)
    t_p, t_d = cm.latencies(d_sms, p_sms)
    assert t_p == pytest.approx(model.predict(prefill, p_sms))
    p_times, p_bytes = model.op_times(prefill, p_sms), model.op_bytes(prefill)
    t_attn = p_times["attn_prefill"]
    t_dense = sum(p_times.values()) - t_attn
    p_attn = t_attn / (t_attn + t_dense)
    d_busy = sum(model.op_times(decode, d_sms).values())
    m_d = sum(model.op_bytes(decode).values()) / d_busy
    m_p1 = p_bytes["attn_prefill"] / t_attn
    m_p2 = (sum(p_bytes.values()) - p_bytes["attn_prefill"]) / t_dense
    B = model.hbm_bandwidth
    overhead = model.predict(decode, d_sms) - d_busy
    expected = overhead + sum(
        w * sum(model.op_times(decode, d_sms, min(1.0, B / (m_d + m_p))).values())
        for w, m_p in ((p_attn, m_p1), (1 - p_attn, m_p2))
    )
    assert t_d == pytest.approx(expected)
    assert t_d >= model.predict(decode, d_sms)
    assert ContentionModel(model, decode, BatchShape()).latencies(d_sms, p_sms) == (
        0.0,
        model.predict(decode, d_sms),
    )


def test_nexus_keeps_the_prefill_costs_between_plans_and_answers_the_same(model):
    from profiler import DatasheetModel, load_model_config

    prefill = BatchShape.prefill(2048, 8000)
    cache = RooflineCache()
    for ctx in (1000, 1500, 2000):  # one running prefill batch, decoders that grow
        decode = BatchShape.decode(32, 32 * ctx)
        cached = ContentionModel(model, decode, prefill, cache)
        fresh = ContentionModel(model, decode, prefill)
        for d in model.gpu.decode_sm_options():
            assert cached.latencies(d, model.gpu.num_sms - d) == pytest.approx(
                fresh.latencies(d, model.gpu.num_sms - d), rel=1e-12
            )
    assert {shape for shape, _ in cache._roofs} == {prefill}  # decode shapes are not kept
    other = DatasheetModel(load_model_config("qwen3-8b"))
    cache.bind(other)  # another latency model starts afresh
    assert not cache._roofs and not cache._alone


# ----------------------------------------------------------------------------- duetserve
def test_duetserve_stays_aggregated_while_the_mixed_batch_meets_the_tbt_slo(model):
    kv = KVCache(20_000, 16)
    running = [decoding(i, kv, 500) for i in range(8)]
    waiting = [Request(100, 0.0, 300, 10)]
    view = make_view(model, waiting, running, kv, slo=Slo(tbt_s=0.1))
    assert policies.get("duetserve").partition(view) == model.gpu.aggregated()


def test_duetserve_splits_when_the_mixed_batch_breaks_the_slo(model):
    kv = KVCache(20_000, 16)
    running = [decoding(i, kv, 1000) for i in range(32)]
    waiting = [Request(100 + i, 0.0, 8000, 10) for i in range(2)]
    slo = Slo(tbt_s=0.05)
    view = make_view(model, waiting, running, kv, slo=slo)
    pol = policies.get("duetserve")
    prefill, decode = pol.pending_work(view)
    assert model.predict(policies.shapes.merge(prefill, decode), 132) > slo.tbt_s
    part = pol.partition(view)
    assert part.is_split and valid(model, part)
    assert model.predict(decode, part.decode_sms) <= slo.tbt_s
    # It is the look-ahead objective's best among the splits that meet the SLO.
    choice = pol.best_split(view, prefill, decode)
    k = pol.params.lookahead
    for d in model.gpu.decode_sm_options():
        t_d = model.predict(decode, d)
        if t_d <= slo.tbt_s:
            t_p = model.predict(prefill, 132 - d)
            rate = (k * decode.n_decode + prefill.prefill_tokens) / max(k * t_d, t_p)
            assert rate <= choice.throughput * (1 + 1e-9)
    # Split lanes get prefill-only and decode-only batches.
    view = make_view(model, waiting, running, kv, partition=part, slo=slo)
    assert pol.next_batch(view, Lane.DECODE).prefill == []
    assert pol.next_batch(view, Lane.PREFILL).decode == []


def test_duetserve_stays_aggregated_when_no_split_can_meet_the_slo(model):
    kv = KVCache(20_000, 16)
    running = [decoding(i, kv, 1000) for i in range(32)]
    waiting = [Request(100, 0.0, 8000, 10)]
    view = make_view(model, waiting, running, kv, slo=Slo(tbt_s=1e-4))
    assert policies.get("duetserve").partition(view) == model.gpu.aggregated()


# ----------------------------------------------------------------------------- disagg
def test_disagg_asks_for_two_whole_gpus_and_prices_the_link(model):
    pol = policies.get("disagg", link_gb_s=100.0, link_latency_s=0.0)
    assert pol.gpus == 2
    assert pol.partition(make_view(model)) == Partition.split(132, 132)
    assert pol.params.transfer_s(1e9) == pytest.approx(0.01)
    with pytest.raises(policies.PolicyError):
        policies.get("disagg", link_gb_s=0)


def test_split_lanes_never_mix_phases(model):
    kv = KVCache(1000, 16)
    running = [decoding(0, kv, 100)]
    waiting = [Request(1, 0.0, 300, 10)]
    for name in ("nexus", "disagg", "static-split"):
        pol = policies.get(name)
        view = make_view(model, waiting, running, kv, partition=Partition.split(84, 48))
        d = pol.next_batch(view, Lane.DECODE)
        p = pol.next_batch(view, Lane.PREFILL)
        assert isinstance(d, Batch) and d.prefill == [] and [r.id for r in d.decode] == [0]
        assert isinstance(p, Batch) and p.decode == []
        assert [(c.request.id, c.length) for c in p.prefill] == [(1, 300)]
        assert isinstance(p.prefill[0], PrefillChunk)


def test_sglang_retracts_the_request_with_the_least_output_and_longest_prompt(model):
    kv = KVCache(19, 16)
    old = decoding(1, kv, 96, generated=50)
    young_short = decoding(2, kv, 96, generated=2)
    young_long = Request(3, 0.0, 112, 200, generated=2, kv_tokens=112, status=Status.RUNNING)
    kv.grow(3, 112)  # 6 + 6 + 7 = 19 blocks: every decode needs one more
    batch = policies.get("sglang").next_batch(
        make_view(model, (), [old, young_short, young_long], kv), Lane.MIXED
    )
    assert [r.id for r in batch.preempt] == [3]
    assert [r.id for r in batch.decode] == [1, 2]
