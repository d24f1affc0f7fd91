"""A decode run predicted in pieces is the same run, bit for bit, as predicted whole.

The simulator predicts a steady run only up to its horizon, a piece at a time, and must get
the very numbers one prediction of the whole run gives.
"""

import numpy as np
import pytest

from policies.batch import BatchShape
from profiler import DatasheetModel, load_model_config
from profiler.decode_steps import PLAIN_RUN_STEPS
from profiler.fitted import FittedModel
from profiler.measured import _AttentionFloor
from twin.latency import load_latency_model

CO = BatchShape.prefill(2048, 0)


@pytest.fixture(params=["datasheet", "fitted", "measured", "measured-floor"])
def model(request, llama, profile_dir):
    if request.param == "datasheet":
        return DatasheetModel(llama)
    if request.param == "fitted":
        return FittedModel.from_profile(profile_dir, model_config=llama)
    if request.param == "measured-floor":  # no table has its head shape: the roofline floor
        floor = load_latency_model(load_model_config("tiny"))
        assert isinstance(floor._gen, _AttentionFloor)
        return floor
    return load_latency_model(llama)


@pytest.mark.parametrize("sms, co", [(132, None), (56, None), (72, CO), (8, CO), (124, CO)])
@pytest.mark.parametrize("n", [1, 3, 8, 64, 100, 512, 2048])
def test_decode_steps_in_plain_floats_equal_the_vectorised_run(model, n, sms, co):
    ctx, steps = n * 37 + 3, 300
    step_s = model.decode_step_s(n, ctx, sms, co, 132 - sms)
    whole = model.predict_decode_run(n, ctx, steps, sms, co, 132 - sms)
    assert np.array_equal(np.array([step_s(j) for j in range(steps)]), whole)


def test_a_model_that_reshapes_the_run_has_no_plain_float_form(llama):
    class Doubled(DatasheetModel):
        def predict_decode_run(self, *args, **kwargs):
            return 2.0 * super().predict_decode_run(*args, **kwargs)

    assert DatasheetModel(llama).decode_step_s(8, 800, 132) is not None
    assert Doubled(llama).decode_step_s(8, 800, 132) is None


def test_a_scalar_row_of_a_work_grid_equals_its_vectorised_row(llama):
    grid = load_latency_model(llama)._gen
    rng = np.random.default_rng(0)
    lengths = np.concatenate(
        [
            rng.uniform(0.0, 2.0 * max(xs[-1] for xs, _ in grid.rows), 3000),
            [x for xs, _ in grid.rows for x in xs],  # every grid point, exactly
            [0.5, 1.0, 1.5],
        ]
    )
    for batch in [*grid.batches, 0.5, 3.0, 77.0, 1e4, *rng.uniform(1.0, 600.0, 20)]:
        row = grid.row_scalar(batch)
        expected = grid.row_array(batch, lengths)
        assert np.array_equal(np.array([row(float(x)) for x in lengths]), expected), batch


@pytest.mark.parametrize("sms, co", [(132, None), (56, None), (72, CO)])
@pytest.mark.parametrize("n", [1, 7, 100])
def test_a_short_run_is_its_plain_float_steps_and_pieces_are_slices(model, n, sms, co):
    ctx = n * 211 + 5
    whole = model._decode_run_array(n, ctx, 300, sms, co, 132 - sms, 0)
    for first, steps in [(0, 1), (0, PLAIN_RUN_STEPS), (3, 5), (40, PLAIN_RUN_STEPS), (9, 60)]:
        piece = model.predict_decode_run(n, ctx, steps, sms, co, 132 - sms, first=first)
        assert piece.dtype == np.float64
        assert np.array_equal(piece, whole[first : first + steps]), (first, steps)


def test_a_decode_batch_overhead_is_its_shapes(model):
    for n, ctx in [(1, 1), (8, 800), (300, 300 * 4000)]:
        assert model.decode_overhead_s(n, ctx) == model.overhead_s(BatchShape.decode(n, ctx))


def test_a_model_that_reshapes_the_overhead_asks_it_of_decode_batches(llama):
    class ByContext(DatasheetModel):
        def overhead_s(self, shape):
            return 1e-3 + 1e-9 * shape.decode_ctx_sum

    class Mixin:
        def overhead_s(self, shape):
            return 2e-3

    class Mixed(Mixin, DatasheetModel):
        pass

    assert ByContext(llama).decode_overhead_s(8, 8000) == 1e-3 + 8e-6
    assert Mixed(llama).decode_overhead_s(8, 8000) == 2e-3
    run = ByContext(llama).predict_decode_run(8, 8000, 3, 132)
    plain = DatasheetModel(llama).predict_decode_run(8, 8000, 3, 132)
    assert np.allclose(run - plain, 8e-6 - 0.5e-3)
