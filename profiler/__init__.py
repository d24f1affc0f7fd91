"""Latency models: the interface, measured operator tables (``profiler.measured``), a datasheet
roofline, and (on a GPU) sweeps that fit one."""

from profiler.config import ConfigError, ModelConfig, load_model_config
from profiler.datasheet import H100_SXM, Datasheet, DatasheetModel
from profiler.model import LatencyModel

__all__ = [
    "H100_SXM",
    "ConfigError",
    "Datasheet",
    "DatasheetModel",
    "LatencyModel",
    "ModelConfig",
    "load_model_config",
]
