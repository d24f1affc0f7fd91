"""Drivers of an engine: ``EngineLoop`` on the wall clock, ``run_virtual`` on the virtual one.

``EngineLoop`` runs in one thread; other threads talk to it only through its inbox. Each
round takes what arrived, aborts what was cancelled, completes every lane whose batch is done
(each completion dispatches the next batch), then waits: briefly while a GPU batch is in
flight, otherwise until the next message or the next scheduled arrival.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping

from gpu_runtime.clock import VirtualClock
from gpu_runtime.engine import Engine
from gpu_runtime.jobs import Job
from twin.core.aborts import abort_schedule


class EngineLoop:
    def __init__(self, engine: Engine, poll_s: float = 5e-5, idle_s: float = 0.05) -> None:
        self.engine = engine
        self.poll_s = poll_s
        self.idle_s = idle_s
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.on_error: Callable[[BaseException], None] | None = None
        self._schedule: list[Job] = []
        self._next = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- other threads
    def submit(self, job: Job) -> None:
        self._post("arrive", job)

    def abort(self, request_id: int) -> None:
        self._post("abort", request_id)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop's thread (for reads that must see a consistent engine)."""
        self._post("call", fn)

    def _post(self, kind: str, payload: object) -> None:
        self.inbox.put((kind, payload))
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_forever, name="twin-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    # ----------------------------------------------------------------- the loop
    def replay(self, jobs: list[Job]) -> None:
        """Run until every job (arriving at its ``arrival_s`` on the engine's clock) is done."""
        self._schedule = jobs
        self._next = 0
        engine = self.engine
        while self._next < len(jobs) or not engine.idle or not self.inbox.empty():
            progressed = self.step()
            if not progressed and not engine.in_flight and self._next >= len(jobs):
                engine.check_all_done()

    def _run_forever(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
        except BaseException as exc:  # the server reports it; the thread must not die silently
            self.error = exc
            if self.on_error is not None:
                self.on_error(exc)

    def step(self) -> bool:
        """One round; returns whether anything happened."""
        engine = self.engine
        self._wake.clear()  # set again by any message that arrives from here on
        arrivals: list[Job] = []
        aborts: list[int] = []
        calls: list[Callable[[], None]] = []
        self._drain(arrivals, aborts, calls)
        now = engine.clock.now()
        schedule = self._schedule
        while self._next < len(schedule) and schedule[self._next].request.arrival_s <= now:
            arrivals.append(schedule[self._next])
            self._next += 1
        progressed = bool(arrivals or aborts or calls)
        if arrivals:
            engine.arrive(arrivals)
        for rid in aborts:
            engine.abort(rid)
        for fn in calls:
            fn()
        for lane in engine.ready_lanes():
            engine.complete(lane)
            progressed = True
        if not progressed:
            self._wait()
        return progressed

    def _drain(self, arrivals: list, aborts: list, calls: list) -> None:
        while True:
            try:
                kind, payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "arrive":
                arrivals.append(payload)
            elif kind == "abort":
                aborts.append(payload)
            elif kind == "call":
                calls.append(payload)

    def _wait(self) -> None:
        engine = self.engine
        if engine.in_flight:
            time.sleep(self.poll_s)  # a device batch is running; poll its event soon
            return
        wait = self.idle_s
        if self._next < len(self._schedule):
            wait = min(wait, self._schedule[self._next].request.arrival_s - engine.clock.now())
        if wait > 0:
            self._wake.wait(wait)


def run_virtual(engine: Engine, jobs: list[Job], aborts: Mapping[int, float] | None = None) -> None:
    """Drive ``engine`` on its ``VirtualClock`` until every request has finished.

    ``jobs`` are in arrival order; ``aborts`` maps a job's position to the seconds at which
    its client goes away. Arrivals and aborts are handled as the simulator's processes do (each
    wake-up takes every one due by now, then the next wake-up is scheduled), so events at
    equal times are ordered the same way in both engines.
    """
    clock = engine.clock
    if not isinstance(clock, VirtualClock):
        raise TypeError("run_virtual needs an engine built with a VirtualClock")
    times = [job.request.arrival_s for job in jobs]
    cancels = abort_schedule(aborts, times)
    i = j = 0
    if jobs:
        clock.schedule(times[0], "arrival", None)
    if cancels:
        clock.schedule(cancels[0][0], "abort", None)
    while (event := clock.next_event()) is not None:
        kind, payload = event
        if kind == "arrival":
            start = i
            while i < len(jobs) and times[i] <= clock.t:
                i += 1
            engine.arrive(jobs[start:i])
            if i < len(jobs):
                clock.schedule(times[i], "arrival", None)
        elif kind == "abort":
            start = j
            while j < len(cancels) and cancels[j][0] <= clock.t:
                j += 1
            for _, position in cancels[start:j]:
                engine.abort(jobs[position].request.id)
            if j < len(cancels):
                clock.schedule(cancels[j][0], "abort", None)
        else:
            engine.complete(payload)
    engine.check_all_done()
