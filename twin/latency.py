"""Pick the latency model for a run: a measured profile when given, else the datasheet roofline."""

from __future__ import annotations

from pathlib import Path

from profiler.calibrate import CALIBRATION_FILE, CalibratedModel, Calibration, CalibrationError
from profiler.config import ModelConfig
from profiler.datasheet import GPUS, DatasheetModel
from profiler.model import LatencyModel
from twin.errors import TwinError


def load_latency_model(
    config: ModelConfig, gpu: str = "h100", profile: str | None = None
) -> LatencyModel:
    if profile and (Path(profile) / CALIBRATION_FILE).is_file():
        return _calibrated(config, Path(profile))
    if profile:
        path = Path(profile)
        try:
            from profiler.fitted import FittedModel
        except ImportError:
            raise TwinError(
                f"--profile {profile}: this build cannot read measured profiles yet"
            ) from None
        return FittedModel.from_profile(path, model_config=config)
    sheet = GPUS.get(gpu.lower())
    if sheet is None:
        raise TwinError(f"--gpu {gpu!r} has no datasheet model; choose one of: {', '.join(GPUS)}")
    return DatasheetModel(config, sheet)


def _calibrated(config: ModelConfig, directory: Path) -> LatencyModel:
    try:
        cal = Calibration.load(directory)
    except CalibrationError as exc:
        raise TwinError(f"--profile {directory}: {exc}") from None
    base_profile = None
    if cal.base_profile:
        base = Path(cal.base_profile)
        base_profile = str(base if base.is_absolute() else directory / base)
    return CalibratedModel(load_latency_model(config, cal.base_gpu, base_profile), cal)
