"""CUDA graphs of decode-only forward passes, one per (lane, SMs, batch bucket, context bucket).

A graph replays on the partition it was captured on, so each split gets its own set; graphs
of one lane share a memory pool (a lane never runs two batches at once) and the two lanes keep
separate pools because they do run at once. Rows past the real batch are padding: they write
their K/V into the scratch block and attend to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpu_runtime.inputs import AttentionMeta, ForwardInputs
from gpu_runtime.runner import ModelRunner
from policies import Lane


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    tables: torch.Tensor
    lens: torch.Tensor
    logits: torch.Tensor


def context_buckets(max_len: int) -> list[int]:
    out, b = [], 1024
    while b < max_len:
        out.append(b)
        b *= 4
    return [*out, max_len]


class DecodeGraphs:
    def __init__(self, runner: ModelRunner, sizes: tuple[int, ...], max_len: int) -> None:
        self.runner = runner
        self.sizes = tuple(sorted(sizes))
        self.max_len = max_len
        self.ctx_buckets = context_buckets(max_len)
        self.max_blocks = -(-max_len // runner.kv.block_size)
        self._graphs: dict[tuple, _Graph] = {}
        self._pools: dict[Lane, tuple] = {}

    def fits(self, inputs: ForwardInputs) -> bool:
        meta = inputs.meta
        return meta.num_prefill_tokens == 0 and 0 < meta.num_decode <= self.sizes[-1]

    def logits(
        self, lane: Lane, sms: int, stream: torch.cuda.Stream, inputs: ForwardInputs
    ) -> torch.Tensor:
        meta = inputs.meta
        n = meta.num_decode
        size = next(s for s in self.sizes if s >= n)
        ctx = next(c for c in self.ctx_buckets if c >= meta.decode_max_len)
        key = (lane, sms, size, ctx)
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = self._capture(lane, sms, size, ctx, stream)
        g.ids[:n].copy_(inputs.input_ids, non_blocking=True)
        g.positions[:n].copy_(inputs.positions, non_blocking=True)
        g.slots[:n].copy_(meta.slot_mapping, non_blocking=True)
        g.slots[n:].fill_(self.runner.kv.scratch_slot)
        width = meta.decode_tables.shape[1]
        g.tables[:n, :width].copy_(meta.decode_tables, non_blocking=True)
        g.lens[:n].copy_(meta.decode_lens, non_blocking=True)
        g.lens[n:].zero_()
        g.graph.replay()
        return g.logits[:n]

    def _capture(self, lane: Lane, sms: int, size: int, ctx: int, stream) -> _Graph:
        runner, device = self.runner, self.runner.device
        zeros = dict(dtype=torch.int64, device=device)
        ids, positions = torch.zeros(size, **zeros), torch.zeros(size, **zeros)
        slots = torch.full((size,), runner.kv.scratch_slot, **zeros)
        tables = torch.zeros((size, self.max_blocks), dtype=torch.int32, device=device)
        lens = torch.zeros(size, dtype=torch.int32, device=device)
        meta = AttentionMeta(slots, [], 0, tables, lens, ctx)
        attention = runner.attention(sms)

        def step() -> torch.Tensor:
            hidden = runner.model(ids, positions, meta, runner.kv, attention)
            return runner.model.logits(hidden)

        with torch.cuda.stream(stream):
            step()  # compiles kernels and settles the allocator before capture
        stream.synchronize()
        if lane not in self._pools:
            self._pools[lane] = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pools[lane], stream=stream):
            logits = step()
        return _Graph(graph, ids, positions, slots, tables, lens, logits)
