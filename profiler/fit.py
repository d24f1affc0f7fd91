"""Fit a profile's curves from its samples: what ``fit.json`` holds.

Per operator class the time of a sample is the roofline ``max(F / R(s), B / W(s))``: every
compute form (``profiler.curves``) is fitted against every bandwidth form by least squares on
the log of time (relative error), and the pair with the lowest k-fold cross-validated MAPE
wins; a pair with fewer parameters wins when it is within ``tie_tolerance`` of the best, so
a simpler law is not passed over for noise. Curves that no sample of a class binds (decode
attention is rarely compute-bound) are held near the device's measured peak-GEMM and copy
curves by a weak prior, so they stay physical instead of drifting to a bound.

Then, with those curves: the per-iteration overhead is the robust median of whole-iteration
time minus the predicted operators; the co-run scale multiplies the copy bandwidth that two
lanes share so that proportional sharing reproduces the co-run samples.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, minimize_scalar

from policies.partition import GpuSpec
from profiler.config import ModelConfig
from profiler.curves import BANDWIDTH_FORMS, COMPUTE_FORMS, Form, evaluate
from profiler.fitted import FittedModel
from profiler.grid import COPY, CORUN, ITERATION, PEAK, row_shapes
from profiler.model import LatencyModel
from profiler.ops import OP_CLASSES
from profiler.profile_io import SAMPLES, ProfileError


@dataclass(frozen=True)
class FitConfig:
    folds: int = 5
    seed: int = 0
    tie_tolerance: float = 0.02  # relative CV MAPE within which fewer parameters win
    prior_weight: float = 0.1  # pull of the device curves on a class's unbound curves
    min_samples: int = 6  # below this a class borrows the device curves
    saturation_level: float = 0.95  # "saturated" means this share of full-GPU bandwidth


@dataclass
class _Data:
    flops: np.ndarray
    nbytes: np.ndarray
    sms: np.ndarray
    t: np.ndarray

    def take(self, idx: np.ndarray) -> _Data:
        return _Data(self.flops[idx], self.nbytes[idx], self.sms[idx], self.t[idx])

    @staticmethod
    def of(df: pd.DataFrame) -> _Data:
        return _Data(
            df["flops"].to_numpy(float),
            df["bytes"].to_numpy(float),
            df["sms"].to_numpy(float),
            df["median_s"].to_numpy(float),
        )


class _Roofline:
    """One candidate: a compute form and/or a bandwidth form fitted jointly."""

    def __init__(
        self,
        cform: Form | None,
        bform: Form | None,
        num_sms: int,
        scales: tuple[float, float],
        prior: dict[str, Any] | None,
        prior_weight: float,
    ) -> None:
        self.cform, self.bform = cform, bform
        self.nc = len(cform.params) if cform else 0
        self.num_sms = num_sms
        lo, hi = [], []
        for form, scale in ((cform, scales[0]), (bform, scales[1])):
            if form is not None:
                a, b = form.bounds(scale, num_sms)
                lo.append(a)
                hi.append(b)
        self.lo, self.hi = np.concatenate(lo), np.concatenate(hi)
        self.prior = prior or {}
        self.prior_weight = prior_weight
        self.prior_s = np.linspace(max(1.0, num_sms / 16), num_sms, 6)

    @property
    def n_params(self) -> int:
        return len(self.lo)

    def curves(self, x: np.ndarray) -> tuple[dict | None, dict | None]:
        c = b = None
        if self.cform:
            c = {"form": self.cform.name, "params": self.cform.to_params(x[: self.nc])}
        if self.bform:
            b = {"form": self.bform.name, "params": self.bform.to_params(x[self.nc :])}
        return c, b

    def predict(self, x: np.ndarray, d: _Data) -> tuple[np.ndarray, np.ndarray]:
        c, b = self.curves(x)
        tc = d.flops / evaluate(c, d.sms) if c else np.zeros_like(d.t)
        tb = d.nbytes / evaluate(b, d.sms) if b else np.zeros_like(d.t)
        return np.maximum(np.maximum(tc, tb), 1e-30), tc > tb

    def residuals(self, x: np.ndarray, d: _Data) -> np.ndarray:
        pred, _ = self.predict(x, d)
        res = [np.log(pred) - np.log(d.t)]
        c, b = self.curves(x)
        w = self.prior_weight
        if c and "compute" in self.prior:
            ref = evaluate(self.prior["compute"], self.prior_s)
            res.append(w * (np.log(evaluate(c, self.prior_s)) - np.log(ref)))
        if b and "bandwidth" in self.prior:
            ref = evaluate(self.prior["bandwidth"], self.prior_s)
            res.append(w * (np.log(evaluate(b, self.prior_s)) - np.log(ref)))
        out = np.concatenate(res)
        return np.where(np.isfinite(out), out, 1e3)

    def solve(self, d: _Data, starts: list[np.ndarray]) -> np.ndarray:
        best, best_cost = None, np.inf
        for x0 in starts:
            x0 = np.clip(x0, self.lo + 1e-9, self.hi - 1e-9)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sol = least_squares(
                    self.residuals, x0, bounds=(self.lo, self.hi), args=(d,), x_scale="jac"
                )
            if np.all(np.isfinite(sol.x)) and sol.cost < best_cost:
                best, best_cost = sol.x, sol.cost
        if best is None:
            raise ProfileError(f"{SAMPLES}: curve fit failed to converge; check for outliers")
        return best


def _starts(form: Form | None, scale: float, num_sms: int) -> list[np.ndarray]:
    if form is None:
        return [np.array([])]
    n = float(num_sms)
    guesses = {
        "power": [{"r_inf": scale, "a": n / 2, "b": 1.0}, {"r_inf": scale, "a": 4.0, "b": 0.5}],
        "saturating": [{"r_sat": scale * f, "s_sat": n * f, "decay": 0.2} for f in (0.3, 0.6, 0.9)],
        "amdahl": [{"r_inf": scale, "a": n / 2}],
        "exp": [{"w_max": scale, "s0": n * f} for f in (0.08, 0.25)],
        "linear_sat": [{"w_max": scale, "s_sat": n * f, "p": 1.0} for f in (0.3, 0.6)],
    }[form.name]
    return [form.to_x(g) for g in guesses]


def _levels(observed: float, device: float) -> list[float]:
    return [observed, device] if device > 1.5 * observed else [observed]


def _mape(pred: np.ndarray, t: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - t) / t)) if len(t) else 0.0


def fit_roofline(
    d: _Data,
    num_sms: int,
    compute_forms: list[Form | None],
    bandwidth_forms: list[Form | None],
    prior: dict[str, Any] | None,
    cfg: FitConfig,
) -> dict[str, Any]:
    """Fit every form pair, cross-validate each, and keep the winner (see module docstring)."""
    obs_rate = float(np.max(d.flops / d.t)) if d.flops.any() else 1.0
    obs_bw = float(np.max(d.nbytes / d.t)) if d.nbytes.any() else 1.0
    prior = prior or {}
    peak = _curve_max(prior.get("compute"), num_sms)
    copy = _curve_max(prior.get("bandwidth"), num_sms)
    scales = (max(10 * obs_rate, peak), max(3 * obs_bw, copy))
    folds = _folds(len(d.t), cfg)
    candidates = []
    for cform, bform in itertools.product(compute_forms, bandwidth_forms):
        model = _Roofline(cform, bform, num_sms, scales, prior, cfg.prior_weight)
        # Start from the observed peak and, where the device curves are higher, from them:
        # a class that never binds one roof would otherwise settle with it binding.
        c_starts = [x for r in _levels(obs_rate * 1.2, peak) for x in _starts(cform, r, num_sms)]
        b_starts = [x for w in _levels(obs_bw * 1.1, copy) for x in _starts(bform, w, num_sms)]
        starts = [np.concatenate([a, b]) for a, b in itertools.product(c_starts, b_starts)]
        x = model.solve(d, starts)
        pred, bound = model.predict(x, d)
        cv_pred = np.empty_like(d.t)
        for test in folds:
            train = np.setdiff1d(np.arange(len(d.t)), test)
            x_fold = model.solve(d.take(train), [x])
            cv_pred[test] = model.predict(x_fold, d.take(test))[0]
        compute, bandwidth = model.curves(x)
        candidates.append(
            {
                "compute": compute,
                "bandwidth": bandwidth,
                "n_params": model.n_params,
                "fit_mape": _mape(pred, d.t),
                "cv_mape": _mape(cv_pred, d.t) if folds else _mape(pred, d.t),
                "compute_bound_fraction": float(np.mean(bound)),
            }
        )
    best_cv = min(c["cv_mape"] for c in candidates)
    close = [c for c in candidates if c["cv_mape"] <= best_cv * (1 + cfg.tie_tolerance) + 1e-12]
    win = min(close, key=lambda c: (c["n_params"], c["cv_mape"]))
    return {
        "compute": win["compute"],
        "bandwidth": win["bandwidth"],
        "cv_mape": win["cv_mape"],
        "fit_mape": win["fit_mape"],
        "compute_bound_fraction": win["compute_bound_fraction"],
        "n": int(len(d.t)),
        "folds": len(folds),
        "candidates": [
            {
                "compute": c["compute"]["form"] if c["compute"] else None,
                "bandwidth": c["bandwidth"]["form"] if c["bandwidth"] else None,
                "cv_mape": c["cv_mape"],
                "fit_mape": c["fit_mape"],
                "n_params": c["n_params"],
            }
            for c in candidates
        ],
    }


def _curve_max(curve: dict[str, Any] | None, num_sms: int) -> float:
    return float(evaluate(curve, num_sms)) if curve else 0.0


def _folds(n: int, cfg: FitConfig) -> list[np.ndarray]:
    k = min(cfg.folds, n // 2)
    if k < 2:
        return []
    order = np.random.default_rng(cfg.seed).permutation(n)
    return [f for f in np.array_split(order, k) if len(f)]


def fit_profile(
    samples: pd.DataFrame, meta: dict[str, Any], cfg: FitConfig | None = None
) -> dict[str, Any]:
    """Everything ``fit.json`` holds, from a samples table and its profile's meta."""
    cfg = cfg or FitConfig()
    num_sms = int(meta["num_sms"])
    model_cfg: ModelConfig = meta["model_config"]
    compute_forms: list[Form | None] = list(COMPUTE_FORMS.values())
    bandwidth_forms: list[Form | None] = list(BANDWIDTH_FORMS.values())

    device: dict[str, Any] = {}
    prior: dict[str, Any] = {}
    peak_rows = samples[samples["op_class"] == PEAK]
    if len(peak_rows) >= 3:
        device["peak"] = fit_roofline(
            _Data.of(peak_rows), num_sms, compute_forms, [None], None, cfg
        )
        prior["compute"] = device["peak"]["compute"]
    copy_rows = samples[samples["op_class"] == COPY]
    if len(copy_rows) >= 3:
        device["copy"] = fit_roofline(
            _Data.of(copy_rows), num_sms, [None], bandwidth_forms, None, cfg
        )
        prior["bandwidth"] = device["copy"]["bandwidth"]

    ops: dict[str, Any] = {}
    for op in OP_CLASSES:
        rows = samples[samples["op_class"] == op]
        if len(rows) >= cfg.min_samples:
            ops[op] = fit_roofline(
                _Data.of(rows), num_sms, compute_forms, bandwidth_forms, prior, cfg
            )
        elif "compute" in prior and "bandwidth" in prior:
            ops[op] = {
                "compute": prior["compute"],
                "bandwidth": prior["bandwidth"],
                "from_device_curves": True,
                "n": int(len(rows)),
            }
        else:
            raise ProfileError(
                f"{SAMPLES}: {len(rows)} samples of operator class {op!r} (at least "
                f"{cfg.min_samples} needed) and no peak/copy samples to stand in"
            )

    if len(copy_rows):
        copy_bw = float(np.max(copy_rows["bytes"] / copy_rows["median_s"]))
    else:
        copy_bw = max(_curve_max(ops[op]["bandwidth"], num_sms) for op in OP_CLASSES)
    gpu = GpuSpec(
        str(meta["device"]), num_sms, int(meta["sm_granularity"]), int(meta["memory_bytes"])
    )
    fit: dict[str, Any] = {
        "fitted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": asdict(cfg),
        "samples": int(len(samples)),
        "ops": ops,
        "device": device,
        "copy_bandwidth": copy_bw,
        "hbm_bandwidth": copy_bw,
        "overhead": {"prefill_s": 0.0, "decode_s": 0.0},
    }
    fit["overhead"] = _fit_overhead(FittedModel(gpu, model_cfg, fit, meta), samples)
    fit["corun"] = _fit_corun(gpu, model_cfg, fit, meta, samples)
    fit["hbm_bandwidth"] = copy_bw * fit["corun"]["scale"]
    model = FittedModel(gpu, model_cfg, fit, meta)
    fit["summary"] = _summary(model, samples, cfg)
    return fit


def _fit_overhead(model: LatencyModel, samples: pd.DataFrame) -> dict[str, Any]:
    rows = samples[samples["op_class"] == ITERATION]
    out: dict[str, Any] = {}
    for kind in ("prefill", "decode"):
        sub = rows[rows["op_name"] == kind]
        resid = [
            r["median_s"] - model.predict(row_shapes(r)[0], int(r["sms"]))
            for _, r in sub.iterrows()
        ]
        # Timing noise grows with the iteration, so short iterations say most about the fixed
        # part: a median weighted by 1/t^2 (the inverse noise variance).
        weights = 1.0 / sub["median_s"].to_numpy(float) ** 2
        out[f"{kind}_s"] = max(0.0, weighted_median(np.array(resid), weights)) if resid else None
        out[f"n_{kind}"] = len(resid)
    # One kind unmeasured borrows the other's launch overhead; neither measured means none.
    fallback = out["prefill_s"] if out["prefill_s"] is not None else out["decode_s"]
    for kind in ("prefill", "decode"):
        if out[f"{kind}_s"] is None:
            out[f"{kind}_s"] = fallback or 0.0
    return out


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def _fit_corun(
    gpu: GpuSpec, model_cfg: ModelConfig, fit: dict[str, Any], meta: dict, samples: pd.DataFrame
) -> dict[str, Any]:
    rows = samples[samples["op_class"] == CORUN]
    if rows.empty:
        return {"scale": 1.0, "n": 0, "measured": False}
    cases = []
    for _, r in rows.iterrows():
        own, co = row_shapes(r)
        cases.append((own, int(r["sms"]), co, int(r["co_sms"]), float(r["median_s"])))
    t = np.array([c[-1] for c in cases])
    copy_bw = fit["copy_bandwidth"]

    def predict(log_scale: float) -> np.ndarray:
        trial = {**fit, "hbm_bandwidth": copy_bw * float(np.exp(log_scale))}
        m = FittedModel(gpu, model_cfg, trial, meta)
        return np.array([m.predict(own, s, co, cs) for own, s, co, cs, _ in cases])

    def loss(log_scale: float) -> float:
        return float(np.sum((np.log(predict(log_scale)) - np.log(t)) ** 2))

    # The loss is flat wherever the lanes do not oversubscribe HBM, so a grid finds the basin
    # (ties go to the scale nearest 1) and a bounded search refines it.
    grid = np.linspace(np.log(0.2), np.log(5.0), 65)
    losses = np.array([loss(g) + 1e-9 * g * g for g in grid])
    i = int(np.argmin(losses))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    sol = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    if sol.fun > losses[i]:
        sol.x = grid[i]
    scale = float(np.exp(sol.x))
    return {
        "scale": scale,
        "n": len(cases),
        "measured": True,
        "mape": _mape(predict(sol.x), t),
        "mape_unscaled": _mape(predict(0.0), t),
    }


def predict_rows(model: LatencyModel, samples: pd.DataFrame) -> np.ndarray:
    """The model's time for each sample row; NaN for device rows (peak matmul, copy)."""
    out = np.full(len(samples), np.nan)
    for i, (_, r) in enumerate(samples.iterrows()):
        op, sms = r["op_class"], int(r["sms"])
        if op in OP_CLASSES:
            rate, bw = model.curves(op, sms)
            out[i] = max(r["flops"] / rate, r["bytes"] / bw)
        elif op == ITERATION:
            out[i] = model.predict(row_shapes(r)[0], sms)
        elif op == CORUN:
            own, co = row_shapes(r)
            out[i] = model.predict(own, sms, co, int(r["co_sms"]))
    return out


def saturation_sms(curve: dict[str, Any], num_sms: int, level: float) -> int:
    """The fewest SMs reaching ``level`` of the curve's full-GPU value."""
    s = np.arange(1, num_sms + 1)
    values = evaluate(curve, s)
    return int(s[np.argmax(values >= level * values[-1])])


def _summary(model: FittedModel, samples: pd.DataFrame, cfg: FitConfig) -> dict[str, Any]:
    from profiler.datasheet import DatasheetModel

    n = model.gpu.num_sms
    pred = predict_rows(model, samples)
    sheet = predict_rows(DatasheetModel(model.config), samples)
    t = samples["median_s"].to_numpy(float)
    by_class = {}
    for op in (*OP_CLASSES, ITERATION, CORUN):
        mask = (samples["op_class"] == op).to_numpy()
        if mask.any():
            by_class[op] = {
                "n": int(mask.sum()),
                "mape": _mape(pred[mask], t[mask]),
                "datasheet_mape": _mape(sheet[mask], t[mask]),
            }
    level = cfg.saturation_level
    saturation = {
        f"{op}_bandwidth_sms": saturation_sms(model.fit["ops"][op]["bandwidth"], n, level)
        for op in OP_CLASSES
    }
    if "copy" in model.fit["device"]:
        saturation["copy_bandwidth_sms"] = saturation_sms(
            model.fit["device"]["copy"]["bandwidth"], n, level
        )
    return {"mape": by_class, "saturation_level": level, "saturation": saturation}
