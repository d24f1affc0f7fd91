"""What a policy sees: a read-only snapshot of the engine, and the latency model to predict with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from policies.batch import Batch, BatchShape
from policies.kvcache import KVCache
from policies.numbers import check_number
from policies.partition import GpuSpec, Lane, Partition
from policies.request import Request


class LatencyModel(Protocol):
    """Predicts the seconds one batch takes on ``sms`` SMs, optionally beside a co-runner.

    ``op_times``, ``op_bytes`` and ``op_roofline`` break a batch down by operator class
    (``gemm``, ``attn_prefill``, ``attn_decode``, ``other``) for policies with their own cost
    model; ``share`` is the fraction of its HBM bandwidth an operator keeps (1 when alone).
    """

    gpu: GpuSpec
    hbm_bandwidth: float

    def op_times(self, shape: BatchShape, sms: int, share: float = 1.0) -> dict[str, float]: ...

    def op_bytes(self, shape: BatchShape) -> dict[str, float]: ...

    def op_roofline(self, shape: BatchShape, sms: int) -> dict[str, tuple[float, float]]: ...

    def predict(
        self, shape: BatchShape, sms: int, co_runner: BatchShape | None = None, co_sms: int = 0
    ) -> float: ...

    def predict_decode_run(
        self,
        n_decode: int,
        ctx_sum: int,
        steps: int,
        sms: int,
        co_runner: BatchShape | None = None,
        co_sms: int = 0,
        first: int = 0,
    ) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class Slo:
    """Latency targets. A request meets the TBT SLO when ``tbt_statistic`` of its gaps does."""

    ttft_s: float = 2.0
    tbt_s: float = 0.1
    tbt_statistic: str = "mean"

    def __post_init__(self) -> None:
        check_number(self.ttft_s, "TTFT SLO (s)", low=0.0, low_open=True)
        check_number(self.tbt_s, "TBT SLO (s)", low=0.0, low_open=True)


@dataclass(slots=True)
class EngineView:
    """The engine's state as one policy call sees it. Policies read it and never mutate it.

    ``waiting`` are arrived requests holding no KV (new or preempted, in queue order);
    ``running`` hold KV and are prefilling or decoding, in admission order. Requests in a batch
    that another lane is executing have ``in_flight`` set and are not schedulable.
    ``decode_steps`` counts the iterations with decode work the engine has run.
    """

    now: float
    waiting: Sequence[Request]
    running: Sequence[Request]
    kv: KVCache
    partition: Partition
    in_flight: Mapping[Lane, Batch]
    slo: Slo
    model: LatencyModel
    gpu: GpuSpec
    arrived: int = 0
    decode_steps: int = 0  # iterations run so far that decoded (SGLang's ratio decays on them)
    # True when the engine just asked the policy's ``partition`` about this very state and it
    # answered ``partition``: a policy need not ask again (see ``SchedulingPolicy.steady``).
    partition_settled: bool = False

    @property
    def prefilling(self) -> list[Request]:
        return [r for r in self.running if not r.in_flight and r.kv_tokens < r.prefill_target]

    @property
    def decoding(self) -> list[Request]:
        return [r for r in self.running if not r.in_flight and r.kv_tokens >= r.prefill_target]

    def phases(self) -> tuple[list[Request], list[Request]]:
        """``(prefilling, decoding)``: one pass over the running requests when every one of
        them decodes (the usual state of a busy engine), as then none can be prefilling."""
        decoding = self.decoding
        if len(decoding) == len(self.running):
            return [], decoding
        return self.prefilling, decoding

    def co_runner(self, lane: Lane) -> tuple[BatchShape | None, int]:
        """The batch (and its SMs) running on the other lane, if any."""
        for other, batch in self.in_flight.items():
            if other is not lane:
                return batch.shape(), self.partition.sms(other)
        return None, 0
