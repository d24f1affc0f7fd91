"""Every latency model honours the same contract, whatever its curves come from."""

import numpy as np
import pytest

from policies.batch import BatchShape
from profiler import DatasheetModel
from profiler.fitted import FittedModel

SHAPES = {
    "prefill": BatchShape.prefill(2048, 0),
    "long prefix": BatchShape.prefill(512, 16384),
    "small decode": BatchShape.decode(4, 4 * 512),
    "decode": BatchShape.decode(64, 64 * 1024),
    "big decode": BatchShape.decode(256, 256 * 2048),
    "mixed": BatchShape(
        prefill_q=(1024,), prefill_ctx=(0,), n_decode=32, decode_ctx_sum=32 * 900, sampled=33
    ),
}
SMS = list(range(8, 133, 4))


@pytest.fixture(params=["datasheet", "fitted"])
def model(request, llama, profile_dir):
    if request.param == "datasheet":
        return DatasheetModel(llama)
    return FittedModel.from_profile(profile_dir, model_config=llama)


@pytest.mark.parametrize("name", list(SHAPES))
def test_predictions_are_positive_and_finite(model, name):
    for sms in SMS:
        t = model.predict(SHAPES[name], sms)
        assert np.isfinite(t) and t > 0


@pytest.mark.parametrize("name", list(SHAPES))
def test_more_sms_are_never_slower(model, name):
    times = np.array([model.predict(SHAPES[name], s) for s in SMS])
    assert np.all(times[1:] <= times[:-1] * (1 + 1e-3)), times


@pytest.mark.parametrize("name", ["decode", "big decode"])
def test_decode_latency_is_flat_past_bandwidth_saturation(model, name):
    shape = SHAPES[name]
    assert model.predict(shape, 96) / model.predict(shape, 132) < 1.05
    # ... while it does still fall steeply where bandwidth grows with SMs.
    assert model.predict(shape, 8) / model.predict(shape, 132) > 2.0


def test_a_co_runner_never_makes_a_lane_faster(model):
    for own in SHAPES.values():
        for co in SHAPES.values():
            for sms in (16, 64, 100):
                alone = model.predict(own, sms)
                assert model.predict(own, sms, co, 132 - sms) >= alone * (1 - 1e-12)


@pytest.mark.parametrize("co", [None, "prefill", "long prefix"])
def test_a_decode_run_equals_repeated_single_steps(model, co):
    co_shape = SHAPES[co] if co else None
    n, ctx, steps, sms = 48, 48 * 700, 25, 56
    run = model.predict_decode_run(n, ctx, steps, sms, co_shape, 132 - sms)
    one_by_one = [
        model.predict(BatchShape.decode(n, ctx + j * n), sms, co_shape, 132 - sms)
        for j in range(steps)
    ]
    np.testing.assert_allclose(run, one_by_one, rtol=1e-9)


def test_describe_and_label_say_where_the_curves_come_from(model):
    info = model.describe()
    assert info["label"] == model.label and info["num_sms"] == 132
    if isinstance(model, FittedModel):
        assert "synthetic profile" in model.label
    else:
        assert "datasheet estimate" in model.label
