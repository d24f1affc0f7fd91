import json

import numpy as np
import pandas as pd
import pytest

from policies.batch import BatchShape
from profiler import load_model_config
from profiler.fitted import FittedModel
from profiler.profile_io import (
    FIT,
    META,
    SAMPLE_COLUMNS,
    SAMPLES,
    ProfileError,
    read_fit,
    read_meta,
)
from twin.latency import load_latency_model

DATE = "2025-01-01"  # the synthetic profile fixture's date

SHAPES = [
    BatchShape.prefill(2048, 0),
    BatchShape.prefill(512, 8192),
    BatchShape.decode(64, 64 * 1024),
    BatchShape(prefill_q=(256,), prefill_ctx=(0,), n_decode=8, decode_ctx_sum=8000, sampled=9),
]


def test_profile_round_trips_to_the_same_predictions(profile_dir, llama):
    loaded = FittedModel.from_profile(profile_dir, model_config=llama)
    meta, fit = read_meta(profile_dir), read_fit(profile_dir)
    direct = FittedModel(loaded.gpu, llama, fit, meta)
    for shape in SHAPES:
        for sms in (8, 64, 124):
            assert loaded.predict(shape, sms) == direct.predict(shape, sms)
            co = BatchShape.decode(32, 32 * 2048)
            assert loaded.predict(shape, sms, co, 132 - sms) == direct.predict(
                shape, sms, co, 132 - sms
            )
    assert loaded.gpu.num_sms == 132 and loaded.gpu.sm_granularity == 8
    assert loaded.describe()["curves"]["gemm"]["compute"] == fit["ops"]["gemm"]["compute"]["form"]


def test_label_names_device_and_date(profile_copy):
    synthetic = FittedModel.from_profile(profile_copy)
    assert synthetic.label.startswith(f"synthetic profile of H100-like GPU {DATE}")
    assert not synthetic.measured
    meta = json.loads((profile_copy / META).read_text())
    meta.update(synthetic=False, device="NVIDIA H100 80GB HBM3", date="2025-02-03")
    (profile_copy / META).write_text(json.dumps(meta))
    measured = FittedModel.from_profile(profile_copy)
    assert measured.label == "measured on NVIDIA H100 80GB HBM3 2025-02-03"
    assert measured.measured


def test_the_simulator_loads_a_profile_by_path(profile_dir, llama):
    model = load_latency_model(llama, profile=str(profile_dir))
    assert isinstance(model, FittedModel)
    assert model.predict(BatchShape.decode(16, 16 * 512), 66) > 0


def _one_line_error(directory, config=None) -> str:
    with pytest.raises(ProfileError) as info:
        FittedModel.from_profile(directory, model_config=config)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", [META, SAMPLES, FIT])
def test_a_missing_file_is_named(profile_copy, name):
    (profile_copy / name).unlink()
    message = _one_line_error(profile_copy)
    assert name in message and "missing" in message


def test_a_missing_directory_is_named(tmp_path):
    assert "no such profile directory" in _one_line_error(tmp_path / "nowhere")


def test_missing_columns_are_named(profile_copy):
    df = pd.read_parquet(profile_copy / SAMPLES).drop(columns=["median_s", "flops"])
    df.to_parquet(profile_copy / SAMPLES)
    message = _one_line_error(profile_copy)
    assert SAMPLES in message and "median_s" in message and "flops" in message


def test_nans_are_named(profile_copy):
    df = pd.read_parquet(profile_copy / SAMPLES)
    df.loc[[3, 7], "median_s"] = np.nan
    df.to_parquet(profile_copy / SAMPLES)
    message = _one_line_error(profile_copy)
    assert SAMPLES in message and "'median_s'" in message and "2 NaN" in message


def test_a_wrong_column_type_is_named(profile_copy):
    df = pd.read_parquet(profile_copy / SAMPLES)
    df["sms"] = "many"
    df.to_parquet(profile_copy / SAMPLES)
    assert "'sms' must be numeric" in _one_line_error(profile_copy)


def test_a_damaged_parquet_file_is_named(profile_copy):
    (profile_copy / SAMPLES).write_bytes(b"not parquet at all")
    assert "not a readable parquet table" in _one_line_error(profile_copy)


@pytest.mark.parametrize("name", [META, FIT])
def test_unreadable_json_is_named(profile_copy, name):
    (profile_copy / name).write_text('{"device": ')
    message = _one_line_error(profile_copy)
    assert name in message and "unreadable JSON" in message


def test_meta_without_a_field_is_named(profile_copy):
    meta = json.loads((profile_copy / META).read_text())
    del meta["num_sms"]
    (profile_copy / META).write_text(json.dumps(meta))
    assert "num_sms" in _one_line_error(profile_copy)


def test_a_fit_with_an_unknown_curve_form_is_named(profile_copy):
    fit = json.loads((profile_copy / FIT).read_text())
    fit["ops"]["attn_decode"]["bandwidth"]["form"] = "cubic"
    (profile_copy / FIT).write_text(json.dumps(fit))
    message = _one_line_error(profile_copy)
    assert FIT in message and "ops.attn_decode" in message


def test_a_fit_with_nan_parameters_is_named(profile_copy):
    fit = json.loads((profile_copy / FIT).read_text())
    fit["ops"]["gemm"]["compute"]["params"]["a"] = float("nan")
    (profile_copy / FIT).write_text(json.dumps(fit))
    assert "ops.gemm.compute.params.a" in _one_line_error(profile_copy)


def test_a_different_model_than_asked_is_refused(profile_dir):
    message = _one_line_error(profile_dir, load_model_config("qwen3-8b"))
    assert META in message and "qwen3-8b" in message and "llama-3.1-8b" in message


def test_the_same_shapes_under_another_name_are_accepted(profile_dir, llama):
    from dataclasses import replace

    renamed = replace(llama, name="my-llama")
    assert FittedModel.from_profile(profile_dir, renamed).config.name == "my-llama"


def test_samples_keep_the_documented_schema(profile_dir):
    df = pd.read_parquet(profile_dir / SAMPLES)
    assert list(df.columns) == list(SAMPLE_COLUMNS)
    assert set(df["op_class"]) == {
        "gemm",
        "attn_prefill",
        "attn_decode",
        "other",
        "peak",
        "copy",
        "iteration",
        "corun",
    }


@pytest.mark.parametrize(
    ("where", "value", "named"),
    [
        ("model.hidden_size", "4096", "hidden_size"),
        ("model.rms_norm_eps", "1e-5", "rms_norm_eps"),
        ("model.num_kv_heads", 5, "num_kv_heads"),
        ("num_sms", "132", "num_sms"),
        ("sm_granularity", 1000, "sm_granularity"),
        ("device", 5, "device"),
    ],
)
def test_a_wrong_typed_or_inconsistent_meta_field_is_one_line(profile_copy, where, value, named):
    meta = json.loads((profile_copy / META).read_text())
    if where.startswith("model."):
        meta["model"][where.removeprefix("model.")] = value
    else:
        meta[where] = value
    (profile_copy / META).write_text(json.dumps(meta))
    message = _one_line_error(profile_copy)
    assert META in message and named in message
