"""The token statistics and token times of random logs against a plain per-request reference.

Each request's token times are its entries' times in log order; from them the reference
computes every statistic request by request with numpy's own functions. The logs cover what a
simulation's never do: ids that are not 0..n-1, empty logs, one-step entries only, requests
that did not finish, a request's entries far apart, and chunks of one pair.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.core import request_order
from twin.core import token_times as token_times_module
from twin.core import tokens as token_module
from twin.core.token_times import request_token_times, split_times
from twin.core.tokens import TokenLog, token_stats


@st.composite
def logs(draw):
    """``(log, request_ids, finished, own_times)``: a random log and each request's times."""
    n = draw(st.integers(0, 12))
    if draw(st.booleans()):
        ids = np.arange(n)
    else:  # distinct ids in any order, some past 32 bits
        pool = st.integers(-(1 << 40), 1 << 40) | st.integers(0, 50)
        ids = np.array(draw(st.lists(pool, min_size=n, max_size=n, unique=True)), np.int64)
    finished = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    log = TokenLog()
    own: list[list[float]] = [[] for _ in range(n)]
    clock = 0.0
    one_step = draw(st.booleans())
    for _ in range(draw(st.integers(0, 25)) if n else 0):
        members = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
        steps = 1 if one_step else draw(st.integers(1, 4))
        times = []
        for _ in range(steps):
            clock += draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.0 / 3]))
            times.append(clock)
        log.add([int(ids[m]) for m in members], times if steps > 1 else times[0])
        for m in members:
            own[m].extend(times)
    return log, ids, finished, [np.array(t, dtype=np.float64) for t in own]


def _check(stats, finished, own, percentile):
    gaps = [np.diff(t) for t in own]
    assert stats.tokens.tolist() == [t.size for t in own]
    for i, (t, g) in enumerate(zip(own, gaps, strict=True)):
        if t.size:
            assert stats.first_s[i] == t[0] and stats.last_s[i] == t[-1]
        else:
            assert np.isnan(stats.first_s[i]) and np.isnan(stats.last_s[i])
        if g.size:
            assert stats.tbt_max_s[i] == g.max()
            assert stats.tbt_mean_s[i] == (t[-1] - t[0]) / (t.size - 1)
        else:
            assert np.isnan(stats.tbt_max_s[i]) and np.isnan(stats.tbt_mean_s[i])
        judged = stats.tbt_percentile_s[percentile][i]
        if finished[i] and g.size:
            assert judged == np.percentile(g, float(percentile[1:]))
        else:
            assert np.isnan(judged)
    every = [g for g, done in zip(gaps, finished, strict=True) if done]
    every = np.concatenate(every) if every else np.empty(0)
    assert np.array_equal(np.repeat(*stats.sorted_gaps()), np.sort(every))
    if every.size:
        assert np.array_equal(
            stats.gap_percentiles([50, 90, 99]), np.percentile(every, [50, 90, 99])
        )
    times = [t for t, done in zip(own, finished, strict=True) if done]
    times = np.sort(np.concatenate(times)) if times else np.empty(0)
    assert np.array_equal(np.sort(np.repeat(stats.time_values, stats.time_counts)), times)


@settings(max_examples=300, deadline=None)
@given(logs(), st.sampled_from([1, 2, 7, 1 << 16]), st.sampled_from(["p90", "p99"]))
def test_statistics_equal_the_per_request_reference(case, chunk, percentile):
    log, ids, finished, own = case
    before = token_module.PAIRS_PER_CHUNK
    token_module.PAIRS_PER_CHUNK = chunk
    try:
        stats = token_stats(log, ids, finished, (percentile,))
    finally:
        token_module.PAIRS_PER_CHUNK = before
    _check(stats, finished, own, percentile)
    whole = token_stats(log, ids, finished, (percentile,))
    for name in ("gap_values", "gap_counts", "time_values", "time_counts", "tokens"):
        # chunks change nothing, not even the order of the gaps' multiset
        assert np.array_equal(getattr(stats, name), getattr(whole, name)), name


@settings(max_examples=300, deadline=None)
@given(logs(), st.sampled_from([1, 3, 1 << 16]), st.booleans())
def test_token_times_equal_each_requests_own(case, chunk, reuse):
    log, ids, finished, own = case
    before = token_times_module.PAIRS_PER_CHUNK, token_times_module.TOKENS_PER_CHUNK
    token_times_module.PAIRS_PER_CHUNK = token_times_module.TOKENS_PER_CHUNK = chunk
    try:
        if reuse:  # the grouping token_stats kept
            stats = token_stats(log, ids, finished)
            assert stats.entries_by_request is not None
            got = request_token_times(log, ids, stats.entries_by_request, stats.tokens)
        else:
            got = request_token_times(log, ids)
    finally:
        token_times_module.PAIRS_PER_CHUNK, token_times_module.TOKENS_PER_CHUNK = before
    rebuilt = split_times(*got)
    assert len(rebuilt) == len(own)
    for t, mine in zip(rebuilt, own, strict=True):
        assert t.dtype == np.float64 and np.array_equal(t, mine)


def test_a_log_too_large_to_keep_its_grouping_still_gives_the_times(monkeypatch):
    log = TokenLog()
    log.add([2, 0], np.array([0.5, 1.0]))
    log.add([1], 1.5)
    log.add([0, 1, 2], 2.0)
    monkeypatch.setattr(token_module, "KEEP_GROUPING_PAIRS", 2)
    monkeypatch.setattr(token_module, "PAIRS_PER_CHUNK", 2)
    stats = token_stats(log, np.arange(3), np.ones(3, dtype=bool))
    assert stats.entries_by_request is None
    times = split_times(*request_token_times(log, np.arange(3)))
    assert [t.tolist() for t in times] == [[0.5, 1.0, 2.0], [1.5, 2.0], [0.5, 1.0, 2.0]]


@pytest.mark.parametrize("pairs", [1, 2, 5, 1 << 16])
def test_joined_chunk_groupings_are_the_whole_logs_grouping(pairs, monkeypatch):
    rng = np.random.default_rng(7)
    pos = rng.integers(0, 300, size=4000)
    id_end = np.cumsum(rng.integers(1, 30, size=400))
    id_end = id_end[id_end < pos.size]
    id_end = np.append(id_end, pos.size)
    entry = np.repeat(np.arange(id_end.size), np.diff(id_end, prepend=0))
    grouped, groups = np.empty(pos.size, np.intp), []
    for e0, e1 in request_order.entry_chunks(id_end, pairs):
        a, b = (int(id_end[e0 - 1]) if e0 else 0), int(id_end[e1 - 1])
        g = request_order.group_by_request(pos[a:b])
        grouped[a:b] = entry[a:b][g.order]
        groups.append((g.head, g.group_size))
    monkeypatch.setattr(request_order, "JOIN_PAIRS", 3)
    joined = request_order.join_groups(grouped, groups)
    assert np.array_equal(joined, entry[np.argsort(pos, kind="stable")])
