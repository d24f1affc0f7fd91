"""Synthetic arrival processes for traces that carry only lengths."""

from __future__ import annotations

import numpy as np

from policies.numbers import check_number
from traces.errors import TraceError

# Gamma inter-arrivals with a larger CV put nearly every request at one instant.
MAX_CV = 100.0


def arrival_times(n: int, rate: float, cv: float = 1.0, seed: int = 0) -> np.ndarray:
    """``n`` arrival times starting at 0: Poisson (cv = 1) or gamma inter-arrivals with that CV."""
    check_number(rate, "arrival rate (--rate)", low=0.0, low_open=True, error=TraceError)
    check_number(cv, "arrival CV (--cv)", low=0.0, low_open=True, high=MAX_CV, error=TraceError)
    check_number(seed, "arrival seed (--seed)", integer=True, low=0, error=TraceError)
    rng = np.random.default_rng(seed)
    if n <= 0:
        return np.empty(0)
    if cv == 1.0:
        gaps = rng.exponential(1.0 / rate, n - 1)
    else:
        shape = 1.0 / cv**2  # gamma with mean 1/rate and the asked coefficient of variation
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))
