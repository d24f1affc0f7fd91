"""Client cancellations known in advance: which request's client goes away, and when.

Both engines take the same schedule (request id -> seconds), so a run with aborts can be
replayed on either and compared decision by decision. An engine calls ``abort`` on its core
at each time; what an abort does is the core's (``SchedulingCore.abort``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from twin.errors import TwinError


def abort_schedule(aborts: Mapping[int, float] | None, arrivals: Sequence[float]) -> list:
    """``aborts`` as (time, request id) in time order, checked against the requests' arrivals."""
    schedule = []
    for rid, at in (aborts or {}).items():
        if not 0 <= rid < len(arrivals):
            last = len(arrivals) - 1
            raise TwinError(f"aborts: request {rid} is not in the workload (0..{last})")
        if not math.isfinite(at) or at <= arrivals[rid]:
            raise TwinError(
                f"aborts: request {rid} is cancelled at {at} s; give a finite time after its "
                f"arrival ({arrivals[rid]} s)"
            )
        schedule.append((float(at), int(rid)))
    return sorted(schedule)
