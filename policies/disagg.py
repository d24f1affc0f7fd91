"""Engine-level prefill/decode disaggregation on two GPUs: the reference that spends twice the
hardware.

Source: DistServe (OSDI 2024, arXiv 2401.09670) and Splitwise (ISCA 2024), as run by
NVIDIA Dynamo and vLLM's P/D mode. One GPU runs only prefill, the other only decode, each with
all its SMs and its own KV cache and no HBM contention between them. When a prompt finishes,
its KV moves to the decode GPU over a link (default NVLink 4, 450 GB/s per direction): the
transfer waits for KV space on the decode GPU and for the link, then takes
``bytes / link_gb_s + link_latency_s``. The prefill GPU runs chunked prefill of the FCFS
queue under a token budget; the decode GPU decodes every request it holds, recompute-
preempting the newest when its KV runs out (the victim is prefilled again on the prefill GPU).

Simplifies: one prefill and one decode instance (1P1D), no tensor parallelism; transfers are
serial on one link and start when the whole prompt is done (no layer-wise streaming); only
the simulator runs it (``gpus = 2``), the single-GPU runtime refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import SchedulingPolicy
from policies.batch import Batch
from policies.numbers import check_fields, check_number
from policies.partition import Lane, Partition
from policies.registry import register
from policies.view import EngineView


@dataclass(frozen=True)
class DisaggParams:
    link_gb_s: float = 450.0
    link_latency_s: float = 10e-6
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        check_fields(self)
        # Beyond these a transfer takes years and the clock stops resolving iterations.
        check_number(self.link_gb_s, "link_gb_s", low=1e-3, high=1e6)
        check_number(self.link_latency_s, "link_latency_s", low=0.0, high=10.0)
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be at least 1")

    def transfer_s(self, nbytes: float) -> float:
        return nbytes / (self.link_gb_s * 1e9) + self.link_latency_s


@register("disagg", DisaggParams)
class DisaggPolicy(SchedulingPolicy):
    """The PREFILL lane is the prefill GPU, the DECODE lane the decode GPU, each with all SMs."""

    params: DisaggParams
    gpus = 2

    def partition(self, view: EngineView) -> Partition:
        return Partition.split(view.gpu.num_sms, view.gpu.num_sms)

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        return self.split_lane_batch(view, lane)
