"""Correct a latency model from real iteration timings.

A real run (``twin run --trace``) records every forward pass: its batch, its SMs and how long
it took. Calibration fits one time scale per operator class and one fixed per-iteration
overhead so that ``sum(scale[op] * t_op) + overhead`` matches the measured durations, by
non-negative least squares on relative error (so short decode steps weigh as much as long
prefills). Only passes that ran alone are used: a co-runner's share of HBM is the part of the
model calibration does not touch. The result wraps the base model, so a calibrated model
predicts for any batch, SM count and co-runner, and says in its label what it was fitted on.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from policies.batch import BatchShape
from profiler.model import LatencyModel
from profiler.ops import OP_CLASSES

CALIBRATION_FILE = "calibration.json"


class CalibrationError(ValueError):
    """Raised with a one-line reason when timings cannot calibrate a model."""


def shape_of(prefill_tokens: int, chunks: int, decodes: int, context: int, prefill_ctx: int):
    """The batch an iteration row describes; several chunks share its totals evenly."""
    decode_ctx = max(0, context - prefill_tokens - prefill_ctx)
    if chunks <= 0 or prefill_tokens <= 0:
        return BatchShape.decode(decodes, decode_ctx)
    q = [prefill_tokens // chunks + (i < prefill_tokens % chunks) for i in range(chunks)]
    c = [prefill_ctx // chunks + (i < prefill_ctx % chunks) for i in range(chunks)]
    return BatchShape(
        prefill_q=tuple(q),
        prefill_ctx=tuple(c),
        n_decode=decodes,
        decode_ctx_sum=decode_ctx,
        sampled=decodes + chunks,
    )


def iteration_shapes(iterations: pd.DataFrame) -> list[BatchShape]:
    cols = ("prefill_tokens", "prefill_chunks", "decode_requests", "context_tokens")
    missing = [c for c in (*cols, "prefill_context_tokens", "sms") if c not in iterations]
    if missing:
        raise CalibrationError(
            f"iterations table lacks {', '.join(missing)}; record it with this version of twin"
        )
    return [
        shape_of(int(p), int(c), int(d), int(x), int(px))
        for p, c, d, x, px in zip(
            *(iterations[c] for c in cols), iterations["prefill_context_tokens"], strict=True
        )
    ]


def alone_rows(iterations: pd.DataFrame) -> pd.DataFrame:
    """Passes that ran with no co-runner and took a positive time."""
    measured = iterations["end_s"] - iterations["start_s"]
    co = iterations["co_runner"].fillna("").astype(str)
    return iterations[(co == "") & (measured > 0)].reset_index(drop=True)


@dataclass
class Calibration:
    scales: dict[str, float]
    overhead_s: float
    iterations: int
    source: str = ""
    base_gpu: str = "h100"  # the datasheet model calibrated, when no base profile
    base_profile: str | None = None  # the measured profile calibrated (relative to this file)
    # Calibrations written before measured tables existed scaled the datasheet roofline.
    base_latency: str = "datasheet"
    base_stack: str = "vllm"
    error: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @staticmethod
    def load(path: Path) -> Calibration:
        file = path / CALIBRATION_FILE if path.is_dir() else path
        try:
            data = json.loads(file.read_text())
            cal = Calibration(
                scales={op: float(data["scales"][op]) for op in OP_CLASSES},
                overhead_s=float(data["overhead_s"]),
                iterations=int(data["iterations"]),
                source=str(data.get("source", "")),
                base_gpu=str(data.get("base_gpu", "h100")),
                base_profile=data.get("base_profile"),
                base_latency=str(data.get("base_latency", "datasheet")),
                base_stack=str(data.get("base_stack", "vllm")),
                error=dict(data.get("error", {})),
            )
        except FileNotFoundError:
            raise CalibrationError(f"{file}: no calibration file here") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{file}: not a calibration file ({exc})") from None
        if not all(math.isfinite(v) and v >= 0 for v in (*cal.scales.values(), cal.overhead_s)):
            raise CalibrationError(f"{file}: scales and overhead must be finite and >= 0")
        return cal


class CalibratedModel(LatencyModel):
    """A base model with each operator class's time scaled and its own per-iteration overhead."""

    def __init__(self, base: LatencyModel, calibration: Calibration) -> None:
        source = f"{base.source}, calibrated on {calibration.iterations} measured iterations"
        if calibration.source:
            source += f" ({calibration.source})"
        super().__init__(base.gpu, base.config, source, base.measured)
        self.base = base
        self.calibration = calibration
        self.mixed = base.mixed
        # A zero scale (an operator the timings never exercised) leaves the base model's time.
        self._scale = {op: (s if s > 0 else 1.0) for op, s in calibration.scales.items()}

    @property
    def label(self) -> str:
        return self.source if self.measured else f"{self.source} (calibrated datasheet estimate)"

    def compute_rate(self, op: str, sms: int) -> float:
        return self.base.compute_rate(op, sms) / self._scale[op]

    def bandwidth(self, op: str, sms: int) -> float:
        return self.base.bandwidth(op, sms) / self._scale[op]

    @property
    def hbm_bandwidth(self) -> float:
        return self.base.hbm_bandwidth

    def overhead_s(self, shape: BatchShape) -> float:
        return self.calibration.overhead_s

    def decode_overhead_s(self, n_decode: int, ctx_sum: int) -> float:
        return self.calibration.overhead_s

    def describe(self) -> dict[str, Any]:
        return {
            **self.base.describe(),
            "label": self.label,
            "calibration": asdict(self.calibration),
        }


def iteration_errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """MAPE and percentiles of the absolute relative error of predicted iteration times."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    keep = measured > 0
    if not keep.any():
        return {"iterations": 0, "mape": math.nan, "p50": math.nan, "p99": math.nan}
    rel = np.abs(predicted[keep] - measured[keep]) / measured[keep]
    return {
        "iterations": int(keep.sum()),
        "mape": float(rel.mean()),
        "p50": float(np.percentile(rel, 50)),
        "p99": float(np.percentile(rel, 99)),
        "bias": float(np.median((predicted[keep] - measured[keep]) / measured[keep])),
    }


def predict_rows(model: LatencyModel, rows: pd.DataFrame) -> np.ndarray:
    shapes = iteration_shapes(rows)
    return np.array([model.predict(s, int(n)) for s, n in zip(shapes, rows["sms"], strict=True)])


def fit(
    model: LatencyModel,
    train: pd.DataFrame,
    test: pd.DataFrame | None = None,
    source: str = "",
) -> CalibratedModel:
    """Fit per-operator scales and an overhead on ``train``; report error on train and test."""
    rows = alone_rows(train)
    if len(rows) < len(OP_CLASSES) + 1:
        raise CalibrationError(
            f"only {len(rows)} iterations ran alone; calibration needs at least "
            f"{len(OP_CLASSES) + 1} (replay a longer trace)"
        )
    measured = (rows["end_s"] - rows["start_s"]).to_numpy(float)
    features = np.array(
        [
            [model.op_times(s, int(n))[op] for op in OP_CLASSES] + [1.0]
            for s, n in zip(iteration_shapes(rows), rows["sms"], strict=True)
        ]
    )
    # Imported here: every process that loads a latency model imports this module, and
    # scipy.optimize alone costs about a third of a second to import.
    from scipy.optimize import nnls

    weights = 1.0 / measured  # relative error: every iteration counts the same
    coef, _ = nnls(features * weights[:, None], measured * weights)
    used = features[:, :-1].any(axis=0)
    scales = {op: float(coef[i]) if used[i] else 0.0 for i, op in enumerate(OP_CLASSES)}
    cal = Calibration(scales, float(coef[-1]), int(len(rows)), source)
    calibrated = CalibratedModel(model, cal)
    cal.error["train_before"] = iteration_errors(predict_rows(model, rows), measured)
    cal.error["train_after"] = iteration_errors(predict_rows(calibrated, rows), measured)
    if test is not None:
        held = alone_rows(test)
        if len(held):
            held_measured = (held["end_s"] - held["start_s"]).to_numpy(float)
            cal.error["test_before"] = iteration_errors(predict_rows(model, held), held_measured)
            cal.error["test_after"] = iteration_errors(
                predict_rows(calibrated, held), held_measured
            )
    return calibrated


def split_by_time(iterations: pd.DataFrame, train_fraction: float = 0.5):
    """The first part of a run to fit on, the rest held out."""
    if not 0.0 < train_fraction < 1.0:
        raise CalibrationError(f"train fraction must be in (0, 1), got {train_fraction}")
    cut = iterations["start_s"].quantile(train_fraction)
    return iterations[iterations["start_s"] <= cut], iterations[iterations["start_s"] > cut]
