"""Closed-loop workloads: N clients, each sending its next request when its last one is done.

Most published serving benchmarks run this way (vLLM's and guidellm's concurrency sweeps,
MLPerf's offline-like runs, the end-to-end runs aiconfigurator ships). The workload supplies
only the lengths, in order (fixed lengths from a ``synthetic:...fixed(...)`` spec, or a
trace's sampled ones); its arrival times are ignored. All clients start at time 0; a client
whose request finished, was aborted or rejected sends the next one at once.
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
        self._sent = 0

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
        if self._sent < len(self._pending):
            # Sent from its own event: the engine is in the middle of applying a batch here.
            event = self.env.timeout(0)
            event.callbacks.append(lambda _: self._send(1))

    def _next_arrival(self) -> float:
        # A client only sends when one of its requests ends, which ends the batch holding it.
        return math.inf
