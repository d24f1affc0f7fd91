"""How a GPU's SMs are split between lanes, and the hardware's rules for splitting them."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

from policies.numbers import check_fields


class Lane(StrEnum):
    MIXED = "mixed"
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True, slots=True)
class Partition:
    """Aggregated (one MIXED lane on ``mixed_sms``) or split (PREFILL and DECODE lanes)."""

    mixed_sms: int = 0
    prefill_sms: int = 0
    decode_sms: int = 0

    @staticmethod
    def aggregated(sms: int) -> Partition:
        return Partition(mixed_sms=sms)

    @staticmethod
    def split(prefill_sms: int, decode_sms: int) -> Partition:
        return Partition(prefill_sms=prefill_sms, decode_sms=decode_sms)

    @property
    def is_split(self) -> bool:
        return self.mixed_sms == 0

    @property
    def lanes(self) -> tuple[Lane, ...]:
        return (Lane.PREFILL, Lane.DECODE) if self.is_split else (Lane.MIXED,)

    def sms(self, lane: Lane) -> int:
        if lane is Lane.MIXED:
            return self.mixed_sms
        return self.prefill_sms if lane is Lane.PREFILL else self.decode_sms

    def sms_beside(self, lane: Lane, co_sms: int, num_sms: int) -> int:
        """SMs a lane's next batch gets: its share, less any the other lane's batch still holds.

        A new split applies to each lane at its next batch, so for a while the other lane may
        still run on its old, larger share; the two never claim more than the device has.
        """
        own = self.sms(lane)
        return min(own, num_sms - co_sms) if co_sms else own

    def __str__(self) -> str:
        if self.is_split:
            return f"split(p={self.prefill_sms}, d={self.decode_sms})"
        return f"aggregated({self.mixed_sms})"


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """The device facts policies and engines need: SM count, split granularity, memory.

    On Hopper a green-context group is a multiple of 8 SMs (at least 8) and the remainder
    takes the rest, so a valid split has one side on the granularity and both sides at least
    ``min_split_sms``.
    """

    name: str
    num_sms: int
    sm_granularity: int
    memory_bytes: int
    min_split_sms: int = 0

    def __post_init__(self) -> None:
        check_fields(self, label=lambda key: f"GPU {self.name!r}: {key}")
        if not 1 <= self.sm_granularity <= self.num_sms:
            raise ValueError(
                f"GPU {self.name!r}: sm_granularity {self.sm_granularity} must be in "
                f"[1, num_sms {self.num_sms}]"
            )
        if self.min_split_sms == 0:
            object.__setattr__(self, "min_split_sms", self.sm_granularity)

    def is_valid(self, partition: Partition) -> bool:
        if not partition.is_split:
            return 0 < partition.mixed_sms <= self.num_sms
        p, d = partition.prefill_sms, partition.decode_sms
        if p + d > self.num_sms or min(p, d) < self.min_split_sms:
            return False
        return p % self.sm_granularity == 0 or d % self.sm_granularity == 0

    def decode_sm_options(self) -> list[int]:
        """Every decode SM count of a valid split that gives prefill the rest, ascending."""
        return list(_decode_sm_options(self.num_sms, self.sm_granularity, self.min_split_sms))

    def split_with_decode(self, decode_sms: int) -> Partition:
        return Partition.split(self.num_sms - decode_sms, decode_sms)

    def aggregated(self) -> Partition:
        return Partition.aggregated(self.num_sms)


@functools.cache
def _decode_sm_options(n: int, granularity: int, min_split: int) -> tuple[int, ...]:
    options = set()
    for k in range(granularity, n, granularity):
        for d in (k, n - k):
            if min(d, n - d) >= min_split:
                options.add(d)
    return tuple(sorted(options))
