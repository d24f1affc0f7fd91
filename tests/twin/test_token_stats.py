"""Token statistics from the columnar token log against each request's own token times.

The reference here is the plain computation on every request's full token times (np.diff and
np.percentile per request and over all gaps); the log's statistics must match it bit for bit
(the per-request TBT mean, a quotient instead of a mean of gaps, to rounding).
"""

import gc

import numpy as np
import pandas as pd
import pytest

import policies
import traces
from policies import Slo
from twin.core import token_times as token_times_module
from twin.core import tokens as token_module
from twin.core.token_times import request_token_times, split_times
from twin.core.tokens import TokenLog, token_stats, weighted_percentile
from twin.outputs.metrics import PERCENTILES, records_frame, request_tokens, summarize
from twin.sim import EngineConfig, Simulator
from twin.sim.simulator import SimRun


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1001])
def test_weighted_percentile_is_numpys_percentile_bit_for_bit(n):
    rng = np.random.default_rng(n)
    values = np.unique(rng.gamma(2.0, 0.01, size=n).round(5))
    counts = rng.integers(1, 50, size=values.size)
    qs = [0, 1, 25, 50, 90, 99, 99.9, 100]
    expected = np.percentile(np.repeat(values, counts), qs)
    assert np.array_equal(weighted_percentile(values, counts, qs), expected)


def test_weighted_percentile_of_nothing_is_nan():
    assert np.isnan(weighted_percentile(np.empty(0), np.empty(0), [50])).all()


def _run(wl, model, policy="vllm", aborts=None, **engine):
    sim = Simulator(wl, policies.get(policy), model, Slo(), EngineConfig(**engine), aborts=aborts)
    return sim, sim.run().requests


@pytest.fixture(scope="module")
def runs():
    from profiler import DatasheetModel, load_model_config

    model = DatasheetModel(load_model_config("llama-3.1-8b"))
    conv = traces.load("azure-conv").first(500)
    code = traces.load("azure-code").first(300).scale_rate(3.0)
    mooncake = traces.load("mooncake").first(150)
    busy = conv.scale_rate(2.0)
    aborts = {i: float(busy.arrival_s[i]) + 0.5 for i in range(0, 500, 9)}  # mid-decode
    return {
        "vllm preempting": _run(conv.scale_rate(4.0), model, num_kv_blocks=1500),
        "vllm aborts": _run(busy, model, aborts=aborts),
        "sglang prefix hits": _run(mooncake, model, "sglang"),
        "nexus split": _run(code, model, "nexus"),
        "static split": _run(code, model, "static-split"),
        "stepping": _run(conv.first(150), model, fast_forward=False),
    }


CASES = [
    "vllm preempting",
    "vllm aborts",
    "sglang prefix hits",
    "nexus split",
    "static split",
    "stepping",
]


def _reference(requests):
    """What the metrics computed from every token time, request by request."""
    times = [r.token_times_array() for r in requests]
    done = [r.status == "finished" for r in requests]
    gaps = [np.diff(t) for t in times]
    every = np.concatenate([g for g, d in zip(gaps, done, strict=True) if d])
    return times, gaps, done, every


@pytest.mark.parametrize("case", CASES)
def test_log_statistics_equal_those_of_the_token_times(runs, case):
    sim, requests = runs[case]
    stats = request_tokens(requests, sim.tokens, "p90")
    times, gaps, done, every = _reference(requests)
    assert stats.tokens.tolist() == [t.size for t in times] == [r.generated for r in requests]
    for i, (t, g, d) in enumerate(zip(times, gaps, done, strict=True)):
        percentile = stats.tbt_percentile_s["p90"][i]  # judged of finished requests only
        assert percentile == np.percentile(g, 90) if d and g.size else np.isnan(percentile)
        if t.size:
            assert stats.first_s[i] == t[0] and stats.last_s[i] == t[-1]
        if g.size:
            assert stats.tbt_max_s[i] == g.max()
            assert stats.tbt_mean_s[i] == pytest.approx(g.mean(), rel=1e-12)
        else:
            assert np.isnan(stats.tbt_max_s[i]) and np.isnan(stats.tbt_mean_s[i])
    assert np.array_equal(np.repeat(*stats.sorted_gaps()), np.sort(every))
    assert not stats._unweighted  # the log shares gaps: the weighted path was taken
    assert np.array_equal(stats.gap_percentiles(PERCENTILES), np.percentile(every, PERCENTILES))
    finished_times = np.sort(np.concatenate([t for t, d in zip(times, done, strict=True) if d]))
    logged_times = np.sort(np.repeat(stats.time_values, stats.time_counts))
    assert np.array_equal(logged_times, finished_times)
    if case == "vllm preempting":
        assert sum(r.preemptions for r in requests) > 0
    if case == "vllm aborts":
        assert any(r.status == "aborted" and r.generated for r in requests)


def test_the_log_shares_a_runs_steps_among_its_requests(runs):
    sim, requests = runs["vllm aborts"]
    tokens = sum(r.generated for r in requests)
    assert len(sim.tokens.times) < tokens / 10  # steps stored once per run, not per request
    assert len(sim.tokens.ids) < tokens / 2


def test_chunked_processing_gives_the_same_statistics(runs, monkeypatch):
    sim, requests = runs["sglang prefix hits"]
    whole = request_tokens(requests, sim.tokens, "p99")
    monkeypatch.setattr(token_module, "PAIRS_PER_CHUNK", 7)
    chunked = request_tokens(requests, sim.tokens, "p99")
    for name in ("tokens", "first_s", "last_s", "tbt_mean_s", "tbt_max_s"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name), err_msg=name)
    np.testing.assert_array_equal(
        np.repeat(*chunked.sorted_gaps()), np.repeat(*whole.sorted_gaps())
    )
    np.testing.assert_array_equal(chunked.tbt_percentile_s["p99"], whole.tbt_percentile_s["p99"])


@pytest.mark.parametrize("statistic", ["mean", "p99", "max"])
def test_records_without_token_times_give_the_same_metrics(runs, statistic):
    sim, requests = runs["vllm preempting"]
    slo = Slo(tbt_s=0.05, tbt_statistic=statistic)
    tokens = request_tokens(requests, sim.tokens, statistic)
    lean = records_frame(requests, tokens, token_times=False)
    full = records_frame(requests)  # the runtime's way: statistics from the token times
    assert "token_times_s" not in lean and "token_times_s" in full
    a, b = summarize(lean, slo, tokens), summarize(full, slo)
    assert a.keys() == b.keys()
    for key, value in b.items():
        if key.startswith("tbt_mean") or key.startswith("tpot"):
            assert a[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert a[key] == value or (value != value and a[key] != a[key]), key
    with pytest.raises(ValueError, match="--token-times"):
        summarize(lean, slo)


def test_a_log_built_from_token_times_reproduces_the_engines_log(runs):
    sim, requests = runs["nexus split"]
    ids = np.array([r.id for r in requests])
    done = np.array([r.status == "finished" for r in requests])
    rebuilt = TokenLog.from_token_times(ids, (r.token_times_array() for r in requests))
    a, b = token_stats(sim.tokens, ids, done), token_stats(rebuilt, ids, done)
    np.testing.assert_array_equal(np.repeat(*a.sorted_gaps()), np.repeat(*b.sorted_gaps()))
    np.testing.assert_array_equal(a.tbt_max_s, b.tbt_max_s)
    assert b._unweighted  # one entry per request: each gap once, numpy's percentile itself
    assert np.array_equal(a.gap_percentiles(PERCENTILES), b.gap_percentiles(PERCENTILES))


def test_a_log_naming_an_unknown_request_is_refused():
    log = TokenLog()
    log.add([3], 1.0)
    for ids in ([1, 2], [0, 1]):  # looked up, or the ids 0..n-1 as their own positions
        with pytest.raises(ValueError, match="not among"):
            token_stats(log, np.array(ids), np.array([True, True]))


def _live_runs() -> int:
    gc.collect()
    return sum(type(o) is SimRun for o in gc.get_objects())


def test_no_run_outlives_its_completion(h100_model):
    before = _live_runs()
    sim, requests = _run(traces.load("azure-conv").first(200).scale_rate(3.0), h100_model)
    assert sim.stats.iterations > 100 and len(sim.iteration_table()["start_s"]) > 100
    assert _live_runs() == before  # the records hold the runs' numbers, not the runs


def test_without_token_times_requests_hold_none(h100_model):
    wl = traces.load("azure-conv").first(60)
    sim = Simulator(wl, policies.get("vllm"), h100_model)
    sim.keep_token_times = False
    requests = sim.run().requests
    assert all(r.token_times == [] for r in requests)
    stats = request_tokens(requests, sim.tokens)
    assert stats.tokens.tolist() == [r.generated for r in requests]


def test_the_log_widens_its_ids_past_32_bits():
    log = TokenLog()
    log.add([1, 2], np.array([0.5, 1.0]))
    log.add([2, 1 << 40], 2.0)
    assert log.ids.itemsize == 8 and list(log.ids) == [1, 2, 2, 1 << 40]
    stats = token_stats(log, np.array([1, 2, 1 << 40]), np.array([True, True, True]))
    assert stats.tokens.tolist() == [2, 3, 1]
    assert stats.tbt_max_s.tolist()[:2] == [0.5, 1.0]


@pytest.mark.parametrize("chunk", [None, (1, 1), (7, 37)])
@pytest.mark.parametrize("case", CASES)
def test_token_times_from_the_log_are_the_requests_own(runs, case, chunk, monkeypatch):
    sim, requests = runs[case]
    if chunk is not None:  # a few pairs and tokens at a time: entries across chunks' edges
        monkeypatch.setattr(token_times_module, "PAIRS_PER_CHUNK", chunk[0])
        monkeypatch.setattr(token_times_module, "TOKENS_PER_CHUNK", chunk[1])
    ids = np.array([r.id for r in requests])
    times, ends = request_token_times(sim.tokens, ids)
    rebuilt = split_times(times, ends)
    assert len(rebuilt) == len(requests)
    for r, t in zip(requests, rebuilt, strict=True):
        own = r.token_times_array()
        assert t.dtype == own.dtype == np.float64
        assert np.array_equal(t, own)  # element for element, in the engine's order


def test_records_of_a_run_without_per_request_times_hold_the_same_times(h100_model):
    wl = traces.load("azure-code").first(150).scale_rate(3.0)
    frames = []
    for keep in (True, False):
        sim = Simulator(wl, policies.get("nexus"), h100_model)
        sim.keep_token_times = keep
        requests = sim.run().requests
        tokens = request_tokens(requests, sim.tokens, "p90")
        frames.append(records_frame(requests, tokens, token_times=True))
    kept, lean = frames
    assert all(r.token_times == [] for r in requests)
    assert [len(t) for t in lean["token_times_s"]] == [r.generated for r in requests]
    pd.testing.assert_frame_equal(lean, kept, check_exact=True)
    with pytest.raises(ValueError, match="kept no token times"):
        records_frame(requests)  # without the log there is nothing to build them from


def test_token_times_follow_request_ids_in_any_order():
    log = TokenLog()
    log.add([7, 3], np.array([0.5, 0.75]))
    log.add([3], 1.0)
    log.add([9, 7], 1.5)
    times, ends = request_token_times(log, np.array([9, 3, 5, 7]))
    got = [t.tolist() for t in split_times(times, ends)]
    assert got == [[1.5], [0.5, 0.75, 1.0], [], [0.5, 0.75, 1.5]]
    empty = split_times(*request_token_times(TokenLog(), np.array([1, 2])))
    assert [t.size for t in empty] == [0, 0] and all(t.dtype == np.float64 for t in empty)


def test_records_refuse_statistics_of_other_requests(runs):
    sim, requests = runs["nexus split"]
    tokens = request_tokens(requests, sim.tokens)
    with pytest.raises(ValueError, match="other requests"):
        records_frame(requests[1:], tokens)
