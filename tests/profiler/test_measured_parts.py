"""The measured model's lookups, with their inlined rows and kept parts, equal their definitions.

A work grid's batch between two measured rows is the two rows weighted (``_row`` is each
row's definition); a batch's full-GPU times are its GEMM curves, its chunks' attention and
its decode attention, however often their parts were asked before.
"""

import bisect

import numpy as np

from policies.batch import BatchShape
from profiler.measured import MeasuredModel
from twin.latency import load_latency_model


def grid_by_rows(grid, batch: float, length: float) -> float:
    if batch <= 0:
        return 0.0
    x = max(length, 1.0) ** grid.growth
    b = grid.batches
    if batch >= b[-1]:
        return grid._row(len(b) - 1, x) * batch / b[-1]
    if batch <= b[0]:
        return grid._row(0, x)
    i = bisect.bisect_right(b, batch)
    t = (batch - b[i - 1]) / (b[i] - b[i - 1])
    return (1 - t) * grid._row(i - 1, x) + t * grid._row(i, x)


def test_a_work_grid_between_its_rows_is_the_two_rows_weighted(llama):
    model = load_latency_model(llama)
    rng = np.random.default_rng(3)
    for grid in (model._gen, model._ctx):
        top = max(xs[-1] for xs, _ in grid.rows) ** (1 / grid.growth)
        lengths = [
            *rng.uniform(0.0, 2.0 * top, 400),
            *(x ** (1 / grid.growth) for xs, _ in grid.rows for x in xs),
            0.5,
            1.0,
        ]
        batches = [*grid.batches, 0.0, 0.5, 3.0, 77.0, 1e4, *rng.uniform(1.0, 600.0, 30)]
        for _ in range(2):  # the second pass finds every bracket kept
            for batch in batches:
                for length in lengths:
                    assert grid(batch, length) == grid_by_rows(grid, batch, length)


def full_sm_by_definition(model: MeasuredModel, shape: BatchShape) -> tuple:
    L = model.config.num_layers
    tokens = shape.tokens
    gemm = model._layer_gemms(tokens) + model._head(shape.sampled) if tokens else 0.0
    times = []
    for q, c in zip(shape.prefill_q, shape.prefill_ctx, strict=True):
        s = q + c
        t = model._ctx(1, s)
        if c:
            t = max(t * (s * s - c * c) / (s * s), model._ctx(1, q))
        times.append(t)
    if not times:
        prefill = 0.0
    elif len(times) == 1:
        prefill = L * times[0]
    else:
        prefill = L * max(sum(times) - (len(times) - 1) * model._ctx_floor, max(times))
    n = shape.n_decode
    decode = L * model._gen(n, shape.decode_ctx_sum / n + 1.0) if n else 0.0
    other = (
        model._other_floor + model.costs.other_bytes_per_token * tokens / model._other_bw
        if tokens
        else 0.0
    )
    return gemm, prefill, decode, other


def test_full_gpu_times_with_kept_parts_equal_their_definition(llama):
    model = load_latency_model(llama)
    rng = np.random.default_rng(5)
    prompts = [int(v) for v in rng.integers(1, 9000, 40)]
    shapes = []
    for _ in range(600):  # prompts and token counts repeat, as arrivals' chunks do
        chunks = int(rng.integers(0, 4))
        q = tuple(int(rng.choice(prompts)) for _ in range(chunks))
        ctx = tuple(int(rng.choice([0, 0, 512, 3000])) for _ in range(chunks))
        n = int(rng.integers(0 if chunks else 1, 200))
        shapes.append(BatchShape(q, ctx, n, n * int(rng.integers(1, 5000)), n + chunks))
    for shape in shapes + shapes:
        assert model._full_sm(shape) == full_sm_by_definition(model, shape), shape
    assert len(model._chunk_s) < 4 * len(prompts) * 3
