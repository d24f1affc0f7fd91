"""Stand-ins for a GPU's partitions and clock, so a sweep's code runs on a CPU (dry runs).

Times taken here are host wall-clock times of CPU kernels: they prove the code path, not the
physics. ``WholeDevice`` offers only the whole device (a CPU has no SM partitions);
``HostClock`` has ``CudaClock``'s interface.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from profiler.partition import PartitionError

Launch = Callable[[], Any]


@dataclass
class WholeDevice:
    """A partition pool with one partition: the whole device, counted as ``num_sms`` units,
    on ``full_stream`` (a CUDA stream on a GPU whose partitions do not work, None on a CPU)."""

    num_sms: int = 1
    full_stream: Any = None

    def stream(self, sms: int) -> Any:
        if sms != self.num_sms:
            raise PartitionError(f"no partition of {sms} SMs: this device has no SM partitions")
        return self.full_stream

    def streams(self, prefill_sms: int, decode_sms: int) -> tuple[Any, Any]:
        raise PartitionError("two SM partitions need a CUDA GPU with green contexts")

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"backend": "none", "splits": [], "sm_counts": [self.num_sms]}


@dataclass
class HostClock:
    """Wall-clock timing of each segment; the graph and co-run parts of ``CudaClock`` degrade
    to eager launches and sequential runs."""

    warmup: int = 1
    repeats: int = 3
    graphs: int = 0

    @property
    def graph_failures(self) -> list[str]:
        return []

    def ready(self) -> None:
        pass

    def recover(self) -> None:
        pass

    def graph(self, fn: Launch, stream: Any) -> Launch:
        return fn

    def time(self, segments: list[Launch], weights: list[float], stream: Any) -> list[float]:
        for _ in range(self.warmup):
            for fn in segments:
                fn()
        out = []
        for _ in range(self.repeats):
            total = 0.0
            for fn, w in zip(segments, weights, strict=True):
                start = time.perf_counter()
                fn()
                total += w * (time.perf_counter() - start)
            out.append(total)
        return out

    def corun(
        self,
        prefill: list[Launch],
        decode: list[Launch],
        weights: list[float],
        streams: tuple[Any, Any],
        reps: int,
    ) -> tuple[list[float], list[float]]:
        return self.time(prefill, weights, None), self.time(decode, weights, None)
