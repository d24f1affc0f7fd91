"""Calibrating a latency model from iteration timings."""

import json

import numpy as np
import pandas as pd
import pytest

from policies import BatchShape
from profiler import DatasheetModel, load_model_config
from profiler.calibrate import (
    CalibratedModel,
    Calibration,
    CalibrationError,
    fit,
    iteration_shapes,
    shape_of,
    split_by_time,
)
from profiler.ops import OP_CLASSES
from twin.latency import load_latency_model


@pytest.fixture(scope="module")
def base():
    return DatasheetModel(load_model_config("llama-3.1-8b"))


def fake_run(model, n=300, seed=0, noise=0.02):
    """Iteration rows whose durations a known calibration produced (plus noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    t = 0.0
    for _ in range(n):
        chunks = int(rng.integers(0, 3))
        prefill = int(rng.integers(64, 4096)) * chunks
        pctx = int(rng.integers(0, 2000)) * chunks
        decodes = int(rng.integers(1, 128))
        dctx = decodes * int(rng.integers(100, 3000))
        ctx = dctx + prefill + pctx
        sms = int(rng.choice([132, 84, 48]))
        shape = shape_of(prefill, chunks, decodes, ctx, pctx)
        rows.append([prefill, chunks, decodes, ctx, pctx, sms, shape])
    truth = Calibration(
        {"gemm": 1.3, "attn_prefill": 0.8, "attn_decode": 1.6, "other": 2.0}, 4e-3, n
    )
    true_model = CalibratedModel(model, truth)
    out = []
    for prefill, chunks, decodes, ctx, pctx, sms, shape in rows:
        d = true_model.predict(shape, sms) * (1 + noise * rng.standard_normal())
        out.append(("mixed", t, t + d, sms, prefill, chunks, decodes, ctx, pctx, 0.0, ""))
        t += d
    cols = [
        "lane",
        "start_s",
        "end_s",
        "sms",
        "prefill_tokens",
        "prefill_chunks",
        "decode_requests",
        "context_tokens",
        "prefill_context_tokens",
        "predicted_s",
        "co_runner",
    ]
    return pd.DataFrame(out, columns=cols), truth


def test_shape_of_splits_totals_over_chunks():
    s = shape_of(prefill_tokens=10, chunks=3, decodes=2, context=10 + 5 + 40, prefill_ctx=5)
    assert s.prefill_q == (4, 3, 3) and s.prefill_ctx == (2, 2, 1)
    assert s.n_decode == 2 and s.decode_ctx_sum == 40
    assert shape_of(0, 0, 4, 400, 0) == BatchShape.decode(4, 400)


def test_fit_recovers_known_scales_and_cuts_the_error(base):
    train, truth = fake_run(base, seed=1)
    test, _ = fake_run(base, seed=2)
    calibrated = fit(base, train, test)
    cal = calibrated.calibration
    for op in OP_CLASSES:
        assert cal.scales[op] == pytest.approx(truth.scales[op], rel=0.15), op
    assert cal.overhead_s == pytest.approx(truth.overhead_s, rel=0.2)
    assert cal.error["test_after"]["mape"] < 0.05 < cal.error["test_before"]["mape"]
    assert cal.error["train_after"]["mape"] < cal.error["train_before"]["mape"]


def test_co_running_iterations_are_left_out(base):
    run, _ = fake_run(base, n=40)
    run.loc[::2, "co_runner"] = "prefill:84sm:2048p+0d"
    assert fit(base, run).calibration.iterations == 20


def test_too_few_iterations_is_a_clear_error(base):
    run, _ = fake_run(base, n=3)
    with pytest.raises(CalibrationError, match="needs at least"):
        fit(base, run)
    with pytest.raises(CalibrationError, match="lacks prefill_context_tokens"):
        iteration_shapes(run.drop(columns=["prefill_context_tokens"]))
    with pytest.raises(CalibrationError, match="train fraction"):
        split_by_time(run, 1.5)


def test_a_saved_calibration_loads_as_a_profile(tmp_path, base):
    run, truth = fake_run(base, n=120)
    cal = fit(base, run).calibration
    (tmp_path / "calibration.json").write_text(cal.to_json())
    model = load_latency_model(base.config, "h100", str(tmp_path))
    assert isinstance(model, CalibratedModel)
    shape = BatchShape.decode(32, 32 * 1000)
    assert model.predict(shape, 132) == pytest.approx(
        CalibratedModel(base, cal).predict(shape, 132)
    )
    assert "calibrated on 120 measured iterations" in model.label


def test_a_broken_calibration_file_says_so(tmp_path):
    (tmp_path / "calibration.json").write_text(json.dumps({"scales": {"gemm": 1}}))
    with pytest.raises(CalibrationError, match="not a calibration file"):
        Calibration.load(tmp_path)
