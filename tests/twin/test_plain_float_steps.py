"""Short runs are summed and interpolated in plain floats: the same numbers numpy gives."""

import numpy as np

from twin.sim.simulator import _interp_once


def test_plain_interpolation_equals_numpy_on_cumulative_fractions():
    rng = np.random.default_rng(7)
    for _ in range(2000):
        durations = rng.random(int(rng.integers(2, 40))) * 10.0 ** rng.uniform(-5, 0)
        start = float(rng.uniform(0, 5000))
        end = start + float(durations.sum()) * float(rng.uniform(0.3, 3.0))
        fractions = np.cumsum(durations) / np.cumsum(durations)[-1]
        expected = np.interp(fractions, (0.0, 1.0), (start, end))
        assert _interp_once(list(fractions), start, end) == list(expected)


def test_plain_interpolation_takes_the_ends_exactly():
    assert _interp_once([0.0, 0.5, 1.0, 1.0], 2.0, 3.0) == [2.0, 2.5, 3.0, 3.0]


def test_sequential_float_sum_equals_numpy_cumsum():
    rng = np.random.default_rng(11)
    for _ in range(2000):
        durations = list(rng.random(int(rng.integers(2, 33))) * 1e-2)
        total, cum = 0.0, []
        for d in durations:
            total += d
            cum.append(total)
        assert cum == list(np.cumsum(durations))
        assert [c / total for c in cum] == list(np.cumsum(durations) / total)
