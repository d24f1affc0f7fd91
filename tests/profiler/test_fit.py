"""The fit recovers known curves from noisy synthetic samples.

Tolerances: samples carry 2.5% lognormal noise. Curves that samples bind are recovered within
5% at every measured SM count; the co-run scale and the shared bandwidth within 10% and 5%;
per-iteration overheads, a small residual under long iterations, within 25%.
"""

import copy
import dataclasses

import numpy as np
import pytest

from profiler.curves import BANDWIDTH_FORMS, COMPUTE_FORMS, evaluate
from profiler.fit import FitConfig, _Data, fit_profile, fit_roofline
from profiler.grid import SweepGrid
from profiler.profile_io import ProfileError, read_fit, read_meta, read_samples
from profiler.synthetic import H100_LIKE, synthetic_meta, synthetic_samples

SMS = np.array(SweepGrid.quick(132, 8).sms, dtype=float)


def close(a, b, rtol):
    return np.all(np.abs(np.asarray(a) / np.asarray(b) - 1) <= rtol)


@pytest.fixture(scope="module")
def fit(profile_dir):
    return read_fit(profile_dir)


# (op class, curve kind) pairs that the quick grid's samples bind, so they are identified.
IDENTIFIED = [
    ("gemm", "compute"),
    ("gemm", "bandwidth"),
    ("attn_prefill", "compute"),
    ("attn_decode", "bandwidth"),
    ("other", "bandwidth"),
]


@pytest.mark.parametrize(("op", "kind"), IDENTIFIED)
def test_bound_curves_are_recovered_within_5_percent(fit, truth, op, kind):
    got = evaluate(fit["ops"][op][kind], SMS)
    want = evaluate(truth["ops"][op][kind], SMS)
    assert close(got, want, 0.05), (op, kind, got / want)


def test_the_winning_forms_are_the_ones_the_data_came_from(fit, truth):
    for op, kind in IDENTIFIED:
        if op == "other":
            continue  # exp-shaped either way; the quick grid cannot tell
        assert fit["ops"][op][kind]["form"] == truth["ops"][op][kind]["form"], (op, kind)


def test_saturation_point_and_decay_are_recovered_on_a_dense_sm_grid(llama, truth):
    # The quick grid has one SM count past the knee; the full grid's SM counts pin it down.
    grid = dataclasses.replace(SweepGrid.quick(132, 8), sms=SweepGrid.full(132, 8).sms)
    truth = copy.deepcopy(truth)
    knee = {"r_sat": 350e12, "s_sat": 72.0, "decay": 0.2}  # mid-range, as Nexus measures
    truth["ops"]["attn_prefill"]["compute"] = {"form": "saturating", "params": knee}
    df = synthetic_samples(llama, grid, truth, synthetic_meta(llama, grid, H100_LIKE))
    rows = _Data.of(df[df["op_class"] == "attn_prefill"])
    forms = list(COMPUTE_FORMS.values()), list(BANDWIDTH_FORMS.values())
    got = fit_roofline(rows, 132, *forms, None, FitConfig())
    assert got["compute"]["form"] == "saturating"
    params = got["compute"]["params"]
    want = truth["ops"]["attn_prefill"]["compute"]["params"]
    assert abs(params["s_sat"] - want["s_sat"]) <= 8
    assert abs(params["decay"] - want["decay"]) <= 0.1
    assert close(params["r_sat"], want["r_sat"], 0.05)


def test_bandwidth_corun_and_overhead_are_recovered(fit, truth):
    assert close(fit["copy_bandwidth"], truth["copy_bandwidth"], 0.05)
    assert close(fit["corun"]["scale"], truth["corun"]["scale"], 0.10)
    assert close(fit["hbm_bandwidth"], truth["hbm_bandwidth"], 0.05)
    for kind in ("prefill_s", "decode_s"):
        assert close(fit["overhead"][kind], truth["overhead"][kind], 0.25), kind


def test_cross_validated_errors_are_reported_and_near_the_noise(fit):
    for op, entry in fit["ops"].items():
        assert 0.0 < entry["cv_mape"] < 0.05, op
        assert len(entry["candidates"]) == len(COMPUTE_FORMS) * len(BANDWIDTH_FORMS)
        best = min(c["cv_mape"] for c in entry["candidates"])
        assert entry["cv_mape"] <= best * (1 + FitConfig().tie_tolerance) + 1e-12
    mape = fit["summary"]["mape"]
    assert mape["iteration"]["mape"] < 0.05 and mape["corun"]["mape"] < 0.05
    # The decode-attention bandwidth of the truth saturates at 64 SMs (linear to s_sat).
    assert 56 <= fit["summary"]["saturation"]["attn_decode_bandwidth_sms"] <= 66


def _gemm_rows(llama, truth, seed=1):
    meta = synthetic_meta(llama, SweepGrid.quick(132, 8), H100_LIKE)
    df = synthetic_samples(llama, SweepGrid.quick(132, 8), truth, meta, seed=seed)
    return _Data.of(df[df["op_class"] == "gemm"])


COMPUTE_TRUTHS = {
    "power": {"r_inf": 1.5e15, "a": 240.0, "b": 1.05},
    "saturating": {"r_sat": 600e12, "s_sat": 72.0, "decay": 0.1},
    "amdahl": {"r_inf": 1.2e15, "a": 120.0},
}


@pytest.mark.parametrize("form", list(COMPUTE_TRUTHS))
def test_cross_validation_picks_the_compute_form_the_data_came_from(llama, truth, form):
    t = copy.deepcopy(truth)
    t["ops"]["gemm"]["compute"] = {"form": form, "params": COMPUTE_TRUTHS[form]}
    got = fit_roofline(
        _gemm_rows(llama, t),
        132,
        list(COMPUTE_FORMS.values()),
        list(BANDWIDTH_FORMS.values()),
        None,
        FitConfig(),
    )
    assert got["compute"]["form"] == form, got["candidates"]
    assert close(evaluate(got["compute"], SMS), evaluate(t["ops"]["gemm"]["compute"], SMS), 0.05)


def test_fit_stays_finite_with_outliers_and_borrows_device_curves_when_a_class_is_thin(
    profile_copy,
):
    samples, meta = read_samples(profile_copy), read_meta(profile_copy)
    rng = np.random.default_rng(3)
    bad = rng.choice(len(samples), 12, replace=False)
    samples.loc[bad, "median_s"] *= 8.0  # a few wild repeats
    other = samples.index[samples["op_class"] == "other"]
    thin = samples.drop(other[4:])
    fit = fit_profile(thin.reset_index(drop=True), meta)
    assert fit["ops"]["other"].get("from_device_curves")
    for op, entry in fit["ops"].items():
        for kind in ("compute", "bandwidth"):
            values = evaluate(entry[kind], np.arange(1, 133))
            assert np.all(np.isfinite(values)) and np.all(values > 0), (op, kind)
            assert np.all(np.diff(values) >= -1e-6 * values[1:]), (op, kind)


def test_a_profile_with_no_usable_samples_is_a_profile_error(profile_copy):
    samples, meta = read_samples(profile_copy), read_meta(profile_copy)
    only_gemm = samples[samples["op_class"] == "gemm"].reset_index(drop=True)
    with pytest.raises(ProfileError, match="operator class 'attn_prefill'"):
        fit_profile(only_gemm, meta)
