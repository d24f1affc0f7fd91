"""Launching a batch: at once on a CPU, asynchronously on a lane's CUDA stream.

An executor returns a pending result the engine polls. On a GPU the sampled ids are copied to
pinned host memory behind a CUDA event: the engine learns that a batch finished by querying the
event, so nothing inside a step waits for the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from gpu_runtime.jobs import Job
from gpu_runtime.runner import ModelRunner
from policies import Batch, KVCache, Lane, Partition, Request


class Pending(Protocol):
    def ready(self) -> bool: ...

    def tokens(self) -> list[int]: ...


class Executor(Protocol):
    def launch(
        self,
        lane: Lane,
        partition: Partition,
        batch: Batch,
        cache: KVCache,
        job_of: Callable[[Request], Job],
    ) -> Pending: ...


@dataclass
class Done:
    ids: list[int]

    def ready(self) -> bool:
        return True

    def tokens(self) -> list[int]:
        return self.ids


class SyncExecutor:
    """Runs each batch to completion inside ``launch``: lanes execute one after the other."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    def launch(self, lane, partition, batch, cache, job_of) -> Done:
        return Done(self.runner.run(batch, cache, job_of, partition.sms(lane)).tolist())


@dataclass
class CudaPending:
    event: torch.cuda.Event
    host: torch.Tensor

    def ready(self) -> bool:
        return self.event.query()

    def tokens(self) -> list[int]:
        self.event.synchronize()
        return self.host.tolist()


class CudaExecutor:
    """Enqueues each batch on its lane's stream; decode-only batches replay CUDA graphs."""

    def __init__(self, runner: ModelRunner, streams, graphs=None) -> None:
        self.runner = runner
        self.streams = streams  # gpu_runtime.streams.LaneStreams
        self.graphs = graphs  # gpu_runtime.graphs.DecodeGraphs or None

    def launch(self, lane, partition, batch, cache, job_of) -> CudaPending:
        runner = self.runner
        sms = partition.sms(lane)
        stream = self.streams.stream(lane, partition)
        with torch.cuda.stream(stream):
            inputs = runner.prepare(batch, cache, job_of)
            if self.graphs is not None and self.graphs.fits(inputs):
                logits = self.graphs.logits(lane, sms, stream, inputs)
            else:
                logits = runner.forward(inputs, sms)
            ids = runner.sample(logits, [job_of(r) for r in inputs.sampled])
            host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            host.copy_(ids, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return CudaPending(event, host)
