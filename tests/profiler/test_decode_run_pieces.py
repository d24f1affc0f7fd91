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


@pytest.mark.parametrize("sms, co", [(132, None), (56, None), (72, CO)])
@pytest.mark.parametrize("n", [1, 7, 64, 300])
def test_pieces_of_a_decode_run_equal_the_whole_run(model, sms, co, n):
    ctx, steps = n * 611 + 5, 90
    whole = model.predict_decode_run(n, ctx, steps, sms, co, 132 - sms)
    cuts = [0, 1, 17, 50, 89, steps]
    pieces = [
        model.predict_decode_run(n, ctx, b - a, sms, co, 132 - sms, first=a)
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    assert np.array_equal(np.concatenate(pieces), whole)
