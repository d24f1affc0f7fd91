"""One batch's operator costs in plain floats equal the array form's, bit for bit."""

import numpy as np

from profiler.ops import CostModel


def test_gemm_costs_of_one_batch_equal_the_array_form(llama):
    costs = CostModel(llama)
    rng = np.random.default_rng(1)
    cases = [(0, 0), (1, 1), (5, 0), (0, 3), *rng.integers(0, 70_000, (500, 2)).tolist()]
    tokens = np.array([t for t, _ in cases])
    rows = np.array([r for _, r in cases])
    flops, nbytes = costs.gemm(tokens, rows)
    for i, (t, r) in enumerate(cases):
        f, b = costs.gemm(t, r)
        assert type(b) is float
        assert (f, b) == (flops[i], nbytes[i]), (t, r)
    # No sampled rows: the lm_head's weights are not read.
    assert costs.gemm(7, 0)[1] < costs.gemm(7, 1)[1] - costs.head_weight_bytes * 0.99
