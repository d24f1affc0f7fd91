"""A latency model whose curves come from a measured profile (``twin profile``).

Loads on any machine: it needs only the profile directory, never a GPU or torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policies.batch import BatchShape
from policies.partition import GpuSpec
from profiler.config import ModelConfig
from profiler.curves import check_curve, evaluate
from profiler.mixed import MixedBatchCost
from profiler.model import LatencyModel
from profiler.ops import OP_CLASSES
from profiler.profile_io import (
    FIT,
    ProfileError,
    check_same_model,
    read_fit,
    read_meta,
    read_samples,
)


class FittedModel(LatencyModel):
    """The roofline of ``LatencyModel`` with each curve fitted from SM sweeps.

    ``hbm_bandwidth`` is the total bandwidth co-running lanes share: the best copy bandwidth
    measured, times the co-run scale fitted from co-run samples (below 1 when co-runs slow
    each other more than proportional sharing of the copy bandwidth predicts).
    """

    def __init__(
        self, gpu: GpuSpec, config: ModelConfig, fit: dict[str, Any], meta: dict[str, Any]
    ) -> None:
        synthetic = bool(meta.get("synthetic", False))
        device, date = meta.get("device", gpu.name), meta.get("date", "")
        source = (
            f"synthetic profile of {device} {date} (generated, not a measurement)"
            if synthetic
            else f"measured on {device} {date}"
        )
        super().__init__(gpu, config, source=source.strip(), measured=not synthetic)
        self.fit = fit
        self.meta = meta
        ops = fit["ops"]
        self._compute = {op: ops[op]["compute"] for op in OP_CLASSES}
        self._bandwidth = {op: ops[op]["bandwidth"] for op in OP_CLASSES}
        self._hbm = float(fit["hbm_bandwidth"])
        self._overhead_prefill = float(fit["overhead"]["prefill_s"])
        self._overhead_decode = float(fit["overhead"]["decode_s"])
        self.mixed = MixedBatchCost.from_fit(fit.get("mixed"), f"{device} fit.json")

    @property
    def label(self) -> str:
        return self.source

    def _clamp(self, sms: int) -> float:
        # Curves were fitted on the device's own SM range; never extrapolate past the device.
        return float(min(max(sms, 1), self.gpu.num_sms))

    def compute_rate(self, op: str, sms: int) -> float:
        return float(evaluate(self._compute[op], self._clamp(sms)))

    def bandwidth(self, op: str, sms: int) -> float:
        return float(evaluate(self._bandwidth[op], self._clamp(sms)))

    @property
    def hbm_bandwidth(self) -> float:
        return self._hbm

    def overhead_s(self, shape: BatchShape) -> float:
        return self._overhead_prefill if shape.prefill_q else self._overhead_decode

    def decode_overhead_s(self, n_decode: int, ctx_sum: int) -> float:
        return self._overhead_decode

    def describe(self) -> dict[str, Any]:
        ops = self.fit["ops"]
        return {
            **super().describe(),
            "profile_date": self.meta.get("date"),
            "synthetic": bool(self.meta.get("synthetic", False)),
            "curves": {
                op: {
                    "compute": ops[op]["compute"]["form"],
                    "bandwidth": ops[op]["bandwidth"]["form"],
                    "cv_mape": ops[op].get("cv_mape"),
                }
                for op in OP_CLASSES
            },
            "hbm_bandwidth": self._hbm,
            "corun_scale": self.fit.get("corun", {}).get("scale"),
            "overhead_s": {"prefill": self._overhead_prefill, "decode": self._overhead_decode},
        }

    @classmethod
    def from_profile(
        cls, directory: str | Path, model_config: ModelConfig | None = None
    ) -> FittedModel:
        """Load a profile directory; refuse it when ``model_config`` has other shapes."""
        path = Path(directory)
        if not path.is_dir():
            raise ProfileError(
                f"{path}: no such profile directory (make one with `twin profile` on a GPU)"
            )
        meta = read_meta(path)
        read_samples(path)  # a profile without its raw measurements cannot be refitted
        fit = read_fit(path)
        check_fit(fit, path / FIT)
        profiled: ModelConfig = meta["model_config"]
        if model_config is not None:
            check_same_model(profiled, model_config, path)
        gpu = GpuSpec(
            str(meta["device"]), meta["num_sms"], meta["sm_granularity"], meta["memory_bytes"]
        )
        return cls(gpu, model_config or profiled, fit, meta)


def check_fit(fit: dict[str, Any], path: Path) -> None:
    """The fields ``FittedModel`` reads, each usable, or one ProfileError naming the first bad."""
    for op in OP_CLASSES:
        entry = fit["ops"].get(op)
        if not isinstance(entry, dict):
            raise ProfileError(
                f"{path}: no curves for operator class {op!r}; refit with --fit-only"
            )
        for kind in ("compute", "bandwidth"):
            problem = check_curve(entry.get(kind), kind)
            if problem:
                raise ProfileError(f"{path}: ops.{op}: {problem}")
    hbm = fit["hbm_bandwidth"]
    if not isinstance(hbm, int | float) or hbm <= 0:
        raise ProfileError(f"{path}: field 'hbm_bandwidth' must be a positive number")
    overhead = fit["overhead"]
    for key in ("prefill_s", "decode_s"):
        value = overhead.get(key) if isinstance(overhead, dict) else None
        if not isinstance(value, int | float) or value < 0:
            raise ProfileError(f"{path}: field 'overhead.{key}' must be a number >= 0")


__all__ = ["FittedModel", "ProfileError", "check_fit"]
