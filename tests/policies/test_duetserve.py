"""DuetServe (arXiv 2511.04791) on hand-built engine states."""

import pytest

import policies
from policies import KVCache, Lane, Request, Slo
from policies.partition import GpuSpec
from tests.policies.policy_views import decoding, make_view


@pytest.fixture(scope="module")
def model():
    from profiler import DatasheetModel, load_model_config

    return DatasheetModel(load_model_config("llama-3.1-8b"))


def valid(model, part):
    return model.gpu.is_valid(part)


def brute_force(model, prefill, decode, tbt, ks=range(1, 9)):
    """max over (S_d, k) of (k D + P) / max(k t_d, t_p) with t_d <= TBT: (rate, S_d, k)."""
    n, best = model.gpu.num_sms, None
    for d in model.gpu.decode_sm_options():
        t_d = model.predict(decode, d)
        if t_d > tbt:
            continue
        t_p = model.predict(prefill, n - d)
        for k in ks:
            rate = (k * decode.n_decode + prefill.prefill_tokens) / max(k * t_d, t_p)
            if best is None or rate > best[0]:
                best = (rate, d, k)
    return best


def heavy_state(model, slo):
    kv = KVCache(20_000, 16)
    running = [decoding(i, kv, 1000) for i in range(32)]
    waiting = [Request(100 + i, 0.0, 8000, 10) for i in range(2)]
    return make_view(model, waiting, running, kv, slo=slo)


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
    # It is the look-ahead objective's best over (S_d, k) among splits that meet the SLO.
    choice = pol.best_split(view, prefill, decode)
    assert choice.decode_sms == part.decode_sms
    assert choice.throughput == pytest.approx(brute_force(model, prefill, decode, slo.tbt_s)[0])
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


def test_lookahead_is_chosen_with_the_split(model):
    """Section 4: the optimiser maximises over (S_p, S_d, k), not over S_d for a fixed k."""
    slo = Slo(tbt_s=0.05)
    view = heavy_state(model, slo)
    joint = policies.get("duetserve")
    prefill, decode = joint.pending_work(view)
    choice = joint.best_split(view, prefill, decode)
    rate, d, k = brute_force(model, prefill, decode, slo.tbt_s)
    assert (choice.decode_sms, choice.lookahead) == (d, k)
    assert choice.throughput == pytest.approx(rate)
    # A pinned k can only do as well or worse; on this state k = 4 is not the best.
    fixed = policies.get("duetserve", lookahead=4).best_split(view, prefill, decode)
    assert fixed.lookahead == 4 and k != 4
    assert fixed.throughput < choice.throughput


def test_two_sm_tpc_options_where_the_gpu_allows_them():
    """DuetServe masks 2-SM TPCs; a GPU described with 2-SM granularity offers those splits."""
    import dataclasses

    from profiler import DatasheetModel, load_model_config
    from profiler.datasheet import H100_SXM

    tpc_sheet = dataclasses.replace(H100_SXM, sm_granularity=2)
    tpc = DatasheetModel(load_model_config("llama-3.1-8b"), tpc_sheet)
    green = DatasheetModel(load_model_config("llama-3.1-8b"))
    assert len(tpc.gpu.decode_sm_options()) > 2 * len(green.gpu.decode_sm_options())
    slo = Slo(tbt_s=0.05)
    pol = policies.get("duetserve")
    choices = []
    for m in (tpc, green):
        view = heavy_state(m, slo)
        prefill, decode = pol.pending_work(view)
        choices.append(pol.best_split(view, prefill, decode))
    assert choices[0].decode_sms in tpc.gpu.decode_sm_options()
    assert choices[0].throughput >= choices[1].throughput  # a superset of the candidates


def test_an_ada_gpu_splits_in_two_sm_steps():
    ada = GpuSpec("L20", 92, 2, 48 * 10**9, min_split_sms=4)
    opts = ada.decode_sm_options()
    assert opts[:3] == [4, 6, 8] and opts[-1] == 88
