"""The engine's time: the wall clock, or a virtual clock that replays the simulator's timing.

The virtual clock lets the real engine (real forward passes, real tokens) run a trace on the
simulator's time line: each batch lasts what the latency model predicts, and in split mode a
batch's remaining time is re-rated whenever the other lane starts or finishes one, with the
simulator's fluid model (``twin.core.contention``). Policies only see ``now``, so on the same
trace both engines face the same decisions; that is what the parity test checks.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

from policies import BatchShape, Lane
from policies.view import LatencyModel
from twin.core.contention import rerate


class WallClock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def reset(self) -> None:
        """Make now zero (a trace replay starts its arrivals from here)."""
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def started(self, lane: Lane, shape: BatchShape, sms: int) -> None:
        pass

    def finished(self, lane: Lane) -> None:
        pass


@dataclass
class _Run:
    shape: BatchShape
    sms: int
    duration: float
    steps: int = 1  # the runtime runs one iteration per batch
    remaining: float = 1.0
    last: float = 0.0
    end: float = 0.0
    version: int = 0


class VirtualClock:
    """Time advances only from event to event: arrivals and predicted batch ends."""

    def __init__(self, model: LatencyModel) -> None:
        self.model = model
        self.t = 0.0
        self.runs: dict[Lane, _Run] = {}
        self._events: list[tuple[float, int, str, object, int]] = []
        self._seq = 0

    def now(self) -> float:
        return self.t

    # ------------------------------------------------------------- events
    def schedule(self, at: float, kind: str, payload: object, version: int = 0) -> None:
        # Timeouts are relative to now, as in SimPy, so event times round the same way.
        at = self.t + max(0.0, at - self.t)
        heapq.heappush(self._events, (at, self._seq, kind, payload, version))
        self._seq += 1

    def next_event(self) -> tuple[str, object] | None:
        """Advance to the next live event; None when nothing is left."""
        while self._events:
            at, _, kind, payload, version = heapq.heappop(self._events)
            if kind == "end":
                lane, run = payload
                if self.runs.get(lane) is not run or run.version != version:
                    continue  # superseded by a re-rate
                payload = lane
            self.t = at
            return kind, payload
        return None

    # ------------------------------------------------------------- lanes
    def started(self, lane: Lane, shape: BatchShape, sms: int) -> None:
        co_lane, co = self._other(lane)
        co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
        duration = self.model.predict(shape, sms, co_shape, co_sms)
        run = _Run(shape, sms, duration, last=self.t, end=self.t + duration)
        self.runs[lane] = run
        if co is not None:
            self._rerate(co_lane, co)
        self._schedule_end(lane, run)

    def finished(self, lane: Lane) -> None:
        del self.runs[lane]
        co_lane, co = self._other(lane)
        if co is not None:
            self._rerate(co_lane, co)

    def _other(self, lane: Lane) -> tuple[Lane | None, _Run | None]:
        for other, run in self.runs.items():
            if other is not lane:
                return other, run
        return None, None

    def _rerate(self, lane: Lane, run: _Run) -> None:
        _, co = self._other(lane)
        co_shape, co_sms = (co.shape, co.sms) if co else (None, 0)
        rerate(run, self.t, self.model, co_shape, co_sms)
        self._schedule_end(lane, run)

    def _schedule_end(self, lane: Lane, run: _Run) -> None:
        run.version += 1
        self.schedule(run.end, "end", (lane, run), run.version)
