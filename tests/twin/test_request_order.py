"""Grouping the token log's pairs by request: the stable argsort, by radix passes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.core.request_order import group_by_request, stable_order


def _groups_by_argsort(pos: np.ndarray):
    order = np.argsort(pos, kind="stable")
    head, group_at = np.unique(pos[order], return_index=True)
    return order, head, group_at


@pytest.mark.parametrize("high", [1, 5, 300, 1 << 16, 1 << 20, 1 << 60])
def test_grouping_is_the_stable_argsort(high):
    rng = np.random.default_rng(3)
    for low in (0, 12345):
        pos = rng.integers(low, low + high, size=5000)
        got = group_by_request(pos)
        order, head, group_at = _groups_by_argsort(pos)
        assert np.array_equal(got.order, order)
        assert np.array_equal(got.head, head) and np.array_equal(got.group_at, group_at)
        assert np.array_equal(got.group_size, np.diff(np.append(group_at, pos.size)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, (1 << 40) - 1), max_size=300), st.sampled_from([1, 7, 1 << 17]))
def test_radix_order_is_the_stable_argsort(values, scale):
    keys = np.asarray(values, dtype=np.int64) // scale  # many repeats, or few
    span = int(keys.max()) if keys.size else 0
    if keys.size:
        assert np.array_equal(stable_order(keys, span), np.argsort(keys, kind="stable"))
    got = group_by_request(keys)
    order, head, group_at = _groups_by_argsort(keys)
    assert np.array_equal(got.order, order) and np.array_equal(got.head, head)
    assert np.array_equal(got.group_at, group_at)


def test_int32_positions_group_as_int64_ones():
    pos = np.random.default_rng(5).integers(0, 40_000, size=20_000)
    a, b = group_by_request(pos.astype(np.int32)), group_by_request(pos)
    assert np.array_equal(a.order, b.order) and np.array_equal(a.head, b.head)
