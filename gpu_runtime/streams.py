"""Which CUDA stream each lane launches on: all SMs when aggregated, a green context when split.

Split streams come from ``profiler.partition.PartitionPool`` (green contexts created at start-up
for every split); a new split takes effect at the lane's next batch, ordered after the lane's
previous work with an event, never interrupting a running batch.
"""

from __future__ import annotations

from typing import Any

import torch

from policies import Lane, Partition
from twin.errors import TwinError


class LaneStreams:
    def __init__(self, device: torch.device, pool: Any | None = None) -> None:
        self.device = device
        self.full = torch.cuda.Stream(device)
        self._pool = pool
        self._last: dict[Lane, torch.cuda.Stream] = {}
        self.switches = 0

    def pool(self) -> Any:
        if self._pool is None:
            try:
                from profiler.partition import PartitionPool
            except ImportError as exc:
                raise TwinError(
                    f"split partitions need profiler.partition (green contexts): {exc}"
                ) from None
            self._pool = PartitionPool()
        return self._pool

    def stream(self, lane: Lane, partition: Partition) -> torch.cuda.Stream:
        if partition.is_split:
            stream = self._split_stream(lane, partition)
        else:
            stream = self.full
        last = self._last.get(lane)
        if last is not None and last is not stream:
            # The lane's earlier batch has completed (the engine saw its event), so this is
            # only a guard against reordering, not a wait.
            stream.wait_stream(last)
            self.switches += 1
        self._last[lane] = stream
        return stream

    def _split_stream(self, lane: Lane, partition: Partition) -> torch.cuda.Stream:
        try:
            from profiler.partition import PartitionError
        except ImportError:
            PartitionError = RuntimeError  # noqa: N806
        try:
            prefill, decode = self.pool().streams(partition.prefill_sms, partition.decode_sms)
        except PartitionError as exc:
            raise TwinError(f"cannot run {partition} on this GPU: {exc}") from None
        return prefill if lane is Lane.PREFILL else decode
