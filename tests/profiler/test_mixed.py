"""The mixed-batch cost: a parameter of the latency model, fitted from mixed-batch sweeps."""

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from policies import BatchShape
from policies.shapes import merge
from profiler import DatasheetModel, load_model_config
from profiler.fitted import FittedModel
from profiler.mixed import (
    MIXED_COLUMNS,
    MixedBatchCost,
    MixedSampleError,
    check_mixed_samples,
    fit_mixed,
    read_mixed_samples,
    synthetic_mixed_samples,
)
from profiler.profile_io import FIT
from twin.commands.profile import profile_command


@pytest.fixture(scope="module")
def model():
    return DatasheetModel(load_model_config("llama-3.1-8b"))


PREFILL = BatchShape.prefill(2048, 0)
DECODE = BatchShape.decode(64, 64 * 2000)


def test_zero_is_the_sum_of_parts_and_only_mixed_batches_pay(model):
    n = model.gpu.num_sms
    both = merge(PREFILL, DECODE)
    plain = {s: model.predict(s, n) for s in (PREFILL, DECODE, both)}
    assert MixedBatchCost().is_zero and model.mixed.is_zero
    ops = model.op_times(both, n)
    assert plain[both] == pytest.approx(sum(ops.values()) + model.overhead_s(both), rel=1e-12)
    costly = DatasheetModel(load_model_config("llama-3.1-8b"))
    costly.mixed = MixedBatchCost(2.0, "test")
    assert costly.predict(PREFILL, n) == plain[PREFILL]
    assert costly.predict(DECODE, n) == plain[DECODE]
    assert costly.predict(both, n) == pytest.approx(plain[both] + 2.0 * ops["attn_decode"])
    assert costly.describe()["mixed_batch_cost"]["decode_attention_slowdown"] == 2.0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_a_bad_slowdown_is_refused(bad):
    with pytest.raises(ValueError, match="finite number >= 0"):
        MixedBatchCost(bad)


def test_the_fit_recovers_the_slowdown_from_synthetic_samples(model):
    exact = fit_mixed(synthetic_mixed_samples(model, 2.5, rows=30), model)
    assert exact.cost.decode_attention_slowdown == pytest.approx(2.5, rel=1e-9)
    assert exact.mape_fitted < 1e-9 < exact.mape_sum_of_parts
    noisy = fit_mixed(synthetic_mixed_samples(model, 2.5, rows=60, noise=0.02, seed=3), model)
    assert noisy.cost.decode_attention_slowdown == pytest.approx(2.5, rel=0.15)
    assert noisy.mape_fitted < noisy.mape_sum_of_parts
    none = fit_mixed(synthetic_mixed_samples(model, 0.0, rows=20), model)
    assert none.cost.decode_attention_slowdown == pytest.approx(0.0, abs=1e-9)
    assert none.samples == 20


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("seconds_mixed", np.nan, "row 2, column 'seconds_mixed'"),
        ("seconds_decode_alone", 0.0, "must be a positive time"),
        ("n_decode", -1, "must be a count >= 0"),
        ("prefill_tokens", np.inf, "row 2, column 'prefill_tokens'"),
    ],
)
def test_bad_samples_get_one_line_naming_row_and_column(model, column, value, message):
    df = synthetic_mixed_samples(model, 1.0, rows=5)
    df[column] = df[column].astype(float)
    df.loc[2, column] = value
    with pytest.raises(MixedSampleError, match=message) as err:
        check_mixed_samples(df, "sweep.csv")
    assert "\n" not in str(err.value) and "sweep.csv" in str(err.value)


def test_missing_columns_and_unmixed_rows_are_refused(model, tmp_path):
    df = synthetic_mixed_samples(model, 1.0, rows=4)
    with pytest.raises(MixedSampleError, match="missing column"):
        check_mixed_samples(df.drop(columns=["decode_context"]), "x.csv")
    df["n_decode"] = 0
    with pytest.raises(MixedSampleError, match="no row mixes"):
        check_mixed_samples(df, "x.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(MixedSampleError, match="not a readable table"):
        read_mixed_samples(tmp_path / "bad.parquet")
    with pytest.raises(MixedSampleError, match="no such file"):
        read_mixed_samples(tmp_path / "none.csv")


def test_twin_profile_fits_the_cost_and_the_profile_carries_it(profile_copy):
    before = FittedModel.from_profile(profile_copy)
    samples = synthetic_mixed_samples(before, 1.5, rows=24)
    assert list(samples.columns) == list(MIXED_COLUMNS)
    csv = profile_copy.parent / "mixed.csv"
    samples.to_csv(csv, index=False)
    app = typer.Typer()
    app.command("profile")(profile_command)
    app.callback()(lambda: None)
    result = CliRunner().invoke(
        app, ["profile", "--fit-only", str(profile_copy), "--no-plots", "--mixed", str(csv)]
    )
    assert result.exit_code == 0, result.output
    assert "mixed-batch cost: decode attention x2.50" in result.output
    fit = json.loads((profile_copy / FIT).read_text())
    assert fit["mixed"]["decode_attention_slowdown"] == pytest.approx(1.5, rel=1e-6)
    after = FittedModel.from_profile(profile_copy)
    both, n = merge(PREFILL, DECODE), after.gpu.num_sms
    assert after.predict(both, n) > before.predict(both, n)
    assert after.predict(PREFILL, n) == pytest.approx(before.predict(PREFILL, n))
    # A damaged entry is one clear error when the profile is loaded.
    fit["mixed"] = {"decode_attention_slowdown": -1}
    (profile_copy / FIT).write_text(json.dumps(fit))
    with pytest.raises(MixedSampleError, match="finite number >= 0"):
        FittedModel.from_profile(profile_copy)
