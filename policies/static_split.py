"""A fixed split of the SMs between a prefill lane and a decode lane.

Source: the static baseline of semi-PD (arXiv 2504.19867) and the split mode of Nexus and
DuetServe with the split frozen. The prefill lane runs chunked prefill of the FCFS queue under
a token budget; the decode lane runs every request that has finished its prefill.

Simplifies: the split never changes; decode preempts the newest request when KV runs out.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.base import SchedulingPolicy
from policies.batch import Batch
from policies.numbers import check_fields
from policies.partition import Lane, Partition
from policies.registry import PolicyError, register
from policies.view import EngineView


@dataclass(frozen=True)
class StaticSplitParams:
    decode_sms: int = 48
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        check_fields(self)
        if self.decode_sms < 1:
            raise ValueError("decode_sms must be at least 1")
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be at least 1")


@register("static-split", StaticSplitParams)
class StaticSplitPolicy(SchedulingPolicy):
    params: StaticSplitParams
    split_ignores_arrivals = True

    def __init__(self, params: StaticSplitParams) -> None:
        super().__init__(params)
        self._checked: tuple[object, Partition] | None = None

    def partition(self, view: EngineView) -> Partition:
        if self._checked is not None and self._checked[0] is view.gpu:
            return self._checked[1]
        part = view.gpu.split_with_decode(self.params.decode_sms)
        if not view.gpu.is_valid(part):
            options = view.gpu.decode_sm_options()
            raise PolicyError(
                f"static-split decode_sms={self.params.decode_sms} is not a valid split on "
                f"{view.gpu.name}; pick one of {options}"
            )
        self._checked = (view.gpu, part)
        return part

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None:
        return self.split_lane_batch(view, lane)
