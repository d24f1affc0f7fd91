"""The simulator with a second GPU: prefill on one, decode on the other, KV moved between.

Used for policies with ``gpus = 2`` (``disagg``). The PREFILL lane is the prefill GPU and the
DECODE lane the decode GPU, each with all SMs, its own KV cache and no HBM shared with the
other. A request whose prompt is done holds its prefill-GPU KV until the decode GPU has room
for it and the link is free, then moves over the link in ``transfer_s(bytes)``.
"""

from __future__ import annotations

from collections import deque

from policies import Batch, EngineView, KVCache, Lane, Partition, Request, Status
from twin.core import Run
from twin.errors import SimulationError
from twin.sim.simulator import SimRun, Simulator


class DisaggSimulator(Simulator):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        transfer = getattr(self.policy.params, "transfer_s", None)
        if transfer is None:
            raise SimulationError(
                f"policy {self.policy.name!r} runs on two GPUs but has no transfer_s(bytes) "
                "parameter method for the KV link"
            )
        self.transfer_s = transfer
        self.prefill_kv = KVCache(self.kv.num_blocks, self.kv.block_size)
        self.on_decode_gpu: set[int] = set()
        self.transfers: deque[Request] = deque()
        self.link_busy = False
        self.link_free_s = 0.0
        self.kv_transferred_bytes = 0.0
        self.runs_through_arrivals = False  # each phase on its own GPU and cache

    def view(self, lane: Lane | None = None) -> EngineView:
        view = super().view(lane)
        if lane is Lane.DECODE:
            view.running = [r for r in self.running if r.id in self.on_decode_gpu]
            view.waiting = []
        elif lane is Lane.PREFILL:
            view.running = [r for r in self.running if r.id not in self.on_decode_gpu]
            view.kv = self.prefill_kv
        return view

    def _check_partition(self, part: Partition) -> None:
        n = self.gpu.num_sms
        if part != Partition.split(n, n):
            raise SimulationError(
                f"policy {self.policy.name!r} runs on two GPUs and must return "
                f"Partition.split({n}, {n}), got {part}"
            )

    def _kv_for(self, lane: Lane) -> KVCache:
        return self.kv if lane is Lane.DECODE else self.prefill_kv

    def _free_kv(self, req: Request) -> None:
        if req.id in self.on_decode_gpu:
            self.kv.free(req.id)
            self.on_decode_gpu.discard(req.id)
        else:
            self.prefill_kv.free(req.id)

    def _co_runner(self, lane: Lane) -> Run | None:
        return None  # separate GPUs share no HBM

    def _horizon(self, lane: Lane, co: Run | None, batch: Batch) -> float:
        """The decode GPU's work changes when a transfer lands, so a run stops at the next
        possible landing: the running transfer's end, or the prefill GPU's batch end."""
        horizon = min(self._next_arrival(), self._next_abort())
        prefill = self.in_flight.get(Lane.PREFILL)
        if prefill is not None:
            horizon = min(horizon, prefill.end)
        if self.link_busy:
            horizon = min(horizon, self.link_free_s)
        return horizon

    def _prefill_done(self, req: Request) -> None:
        req.in_flight = True  # in transit: neither GPU may schedule it
        self.transfers.append(req)
        self._start_transfer()

    def _complete(self, run: SimRun) -> None:
        super()._complete(run)
        if run.lane is Lane.DECODE:
            self._start_transfer()  # decode may have freed KV for a waiting transfer

    def _start_transfer(self) -> None:
        """Move the oldest finished prompt over the link once the decode GPU can hold it."""
        if self.link_busy or not self.transfers:
            return
        req = self.transfers[0]
        if not self.kv.can_grow(req.id, req.kv_tokens):
            return
        self.transfers.popleft()
        self.kv.grow(req.id, req.kv_tokens)
        nbytes = req.kv_tokens * self.model.config.kv_bytes_per_token
        self.kv_transferred_bytes += nbytes
        self.link_busy = True
        seconds = self.transfer_s(nbytes)
        self.link_free_s = self.env.now + seconds
        done = self.env.timeout(seconds)
        done.callbacks.append(lambda _event: self._arrive_on_decode_gpu(req))

    def _arrive_on_decode_gpu(self, req: Request) -> None:
        self.link_busy = False
        self.prefill_kv.free(req.id)
        self.on_decode_gpu.add(req.id)
        req.in_flight = False
        if req.status is not Status.RUNNING:
            raise SimulationError(f"request {req.id} left the engine during its KV transfer")
        self._start_transfer()
        self._dispatch()
