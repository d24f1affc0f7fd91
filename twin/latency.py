"""Pick the latency model for a run: a profile when given, else measured tables or a datasheet."""

from __future__ import annotations

from pathlib import Path

from profiler.calibrate import CALIBRATION_FILE, CalibratedModel, Calibration, CalibrationError
from profiler.config import ModelConfig
from profiler.datasheet import H100_SXM, Datasheet, DatasheetModel
from profiler.gpus import GpuEntry, UnknownGpu, gpu_entry
from profiler.measured import STACKS, MeasuredModel
from profiler.model import LatencyModel
from profiler.tables.lookup import NoTable
from twin.errors import TwinError

LATENCY_MODELS = ("measured", "datasheet")


def load_latency_model(
    config: ModelConfig,
    gpu: str = "h100",
    profile: str | None = None,
    stack: str = "vllm",
    latency: str = "measured",
) -> LatencyModel:
    """A profile wins; else the GPU's measured tables, or its datasheet roofline where the
    data has none (or ``latency="datasheet"``)."""
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
    if latency not in LATENCY_MODELS:
        raise TwinError(f"--latency {latency!r}: use {' or '.join(LATENCY_MODELS)}")
    if stack not in STACKS:
        raise TwinError(f"--stack {stack!r}: use one of {', '.join(STACKS)}")
    try:
        entry = gpu_entry(gpu)
    except UnknownGpu as exc:
        raise TwinError(str(exc.args[0])) from None
    if latency == "measured" and entry.tables is not None:
        try:
            return MeasuredModel(config, entry, stack)
        except NoTable as exc:
            msg = f"--gpu {gpu} --stack {stack}: {exc}; try --latency datasheet"
            raise TwinError(msg) from None
    return DatasheetModel(config, datasheet_for(entry))


def datasheet_for(entry: GpuEntry) -> Datasheet:
    """The roofline's sheet for a GPU: the H100's as it always was, others from their entry."""
    if entry.key == "h100":
        return H100_SXM
    return Datasheet(
        name=entry.name,
        num_sms=entry.num_sms,
        sm_granularity=entry.sm_granularity,
        memory_bytes=entry.memory_bytes,
        peak_flops=entry.bf16_flops,
        hbm_bytes_per_s=entry.hbm_bytes_per_s,
    )


def _calibrated(config: ModelConfig, directory: Path) -> LatencyModel:
    try:
        cal = Calibration.load(directory)
    except CalibrationError as exc:
        raise TwinError(f"--profile {directory}: {exc}") from None
    base_profile = None
    if cal.base_profile:
        base = Path(cal.base_profile)
        base_profile = str(base if base.is_absolute() else directory / base)
    base_model = load_latency_model(
        config, cal.base_gpu, base_profile, cal.base_stack, cal.base_latency
    )
    return CalibratedModel(base_model, cal)
