"""Closed-loop workloads: N clients, each sending its next request when its last one is done.

Most published serving benchmarks run this way (vLLM's and guidellm's concurrency sweeps,
MLPerf's offline-like runs, the end-to-end runs aiconfigurator ships). The workload supplies
only the lengths, in order (fixed lengths from a ``synthetic:...fixed(...)`` spec, or a
trace's sampled ones); its arrival times are ignored. All clients start at time 0; a client
whose request finished, was aborted or rejected sends the next one at once, so it is in the
queue when the engine forms its next batch (no client or network delay is modelled).
"""

from __future__ import annotations

import math

from policies import Request
from twin.errors import SimulationError
from twin.sim.simulator import Simulator


class ClosedLoopSimulator(Simulator):
    def __init__(self, *args, concurrency: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if concurrency < 1:
            raise SimulationError(f"--concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self.runs_past_finishes = False  # a finish sends the client's next request at once
        self.runs_through_arrivals = False  # its arrivals are not known in advance
        self._sent = 0
        self._owed = 0  # requests finished whose clients' next request is not yet sent

    def _arrivals(self):
        self._send(min(self.concurrency, len(self._pending)))
        yield self.env.timeout(0)

    def _send(self, n: int) -> None:
        now = self.env.now
        batch = self._pending[self._sent : self._sent + n]
        for req in batch:
            req.arrival_s = now
        self._sent += len(batch)
        if self.progress is not None:
            self.progress(self._sent, len(self._pending))
        if batch:
            self.arrive(batch)

    def _request_done(self, req: Request) -> None:
        super()._request_done(req)
        # The client sends at once; the engine sees the request when it forms its next batch
        # (the core is in the middle of applying a batch here, so it is admitted just before).
        self._owed += 1

    def _dispatch(self) -> None:
        if not self._owed or self._dispatching or self._sent >= len(self._pending):
            self._owed = 0 if self._sent >= len(self._pending) else self._owed
            super()._dispatch()
            return
        while self._owed and self._sent < len(self._pending):
            n, self._owed = self._owed, 0
            self._send(n)  # arrive() dispatches; rejections it makes are owed again
        self._owed = 0

    def _next_arrival(self) -> float:
        # A client only sends when one of its requests ends, which ends the batch holding it.
        return math.inf
