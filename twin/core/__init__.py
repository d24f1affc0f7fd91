"""The scheduling core: serving state and the policy's decisions applied to it, for both engines.

``scheduler`` holds ``SchedulingCore`` (arrivals and rejections, dispatch, launch, preemption,
completion and aborts); ``records`` what it records per batch and over time; ``contention``
the fluid model of two lanes sharing HBM, for engines that keep time by prediction.
"""

from twin.core.records import DecodePhase, Run, run_label
from twin.core.scheduler import EngineStats, SchedulingCore

__all__ = ["DecodePhase", "EngineStats", "Run", "SchedulingCore", "run_label"]
