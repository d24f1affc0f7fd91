"""A decode run predicted in pieces is the same run, bit for bit, as predicted whole.

The simulator predicts a steady run only up to its horizon, a piece at a time, and must get
the very numbers one prediction of the whole run gives.
"""

import numpy as np
import pytest

from policies.batch import BatchShape
from profiler import DatasheetModel
from profiler.fitted import FittedModel
from twin.latency import load_latency_model

CO = BatchShape.prefill(2048, 0)


@pytest.fixture(params=["datasheet", "fitted", "measured"])
def model(request, llama, profile_dir):
    if request.param == "datasheet":
        return DatasheetModel(llama)
    if request.param == "fitted":
        return FittedModel.from_profile(profile_dir, model_config=llama)
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
