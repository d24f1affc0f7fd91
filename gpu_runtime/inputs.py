"""From a policy's ``Batch`` to the tensors of one forward pass.

Rows are laid out prefill chunks first (in batch order), then one row per decode request. Every
row's KV goes to the slot its position maps to through the request's block table in
``policies.KVCache``, so the paged tensors follow the same accounting as the simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from policies import Batch, KVCache, Request


@dataclass
class PrefillSeq:
    q_start: int  # first row of the chunk in the flat batch
    q_len: int
    ctx_len: int  # tokens already cached before the chunk
    block_table: torch.Tensor  # int64, the blocks covering ctx_len + q_len tokens


@dataclass
class AttentionMeta:
    slot_mapping: torch.Tensor  # [T] int64 cache slot of each row's new K/V
    prefill: list[PrefillSeq]
    num_prefill_tokens: int
    decode_tables: torch.Tensor | None = None  # [n, max_blocks] int32
    decode_lens: torch.Tensor | None = None  # [n] int32, context including the new token
    decode_max_len: int = 0  # a host-side bound on decode_lens (sizes kernel grids)

    @property
    def num_decode(self) -> int:
        return 0 if self.decode_lens is None else int(self.decode_lens.shape[0])


@dataclass
class ForwardInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMeta
    sample_rows: torch.Tensor  # rows whose logits are sampled
    sampled: list[Request]  # the request of each sampled row, in order


def slots_for(table: Sequence[int], start: int, length: int, block_size: int) -> list[int]:
    return [
        table[p // block_size] * block_size + p % block_size for p in range(start, start + length)
    ]


def build_inputs(
    batch: Batch,
    kv: KVCache,
    tokens_of: Callable[[Request], list[int]],
    device: torch.device,
) -> ForwardInputs:
    """Tensors for ``batch``, whose KV blocks the engine has already committed on ``kv``."""
    bs = kv.block_size
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    prefill: list[PrefillSeq] = []
    rows: list[int] = []
    sampled: list[Request] = []
    for chunk in batch.prefill:
        req, start, length = chunk.request, chunk.start, chunk.length
        table = kv.block_table(req.id)
        row = len(ids)
        ids += tokens_of(req)[start : start + length]
        pos += range(start, start + length)
        slots += slots_for(table, start, length, bs)
        need = kv.blocks_for(start + length)
        prefill.append(
            PrefillSeq(row, length, start, torch.tensor(table[:need], dtype=torch.int64))
        )
        if chunk.completes:
            rows.append(row + length - 1)
            sampled.append(req)
    num_prefill = len(ids)
    meta = AttentionMeta(_long(slots, device), prefill, num_prefill)
    if batch.decode:
        tables = [kv.block_table(r.id) for r in batch.decode]
        width = max(len(t) for t in tables)
        lens = []
        for req, table in zip(batch.decode, tables, strict=True):
            p = req.kv_tokens
            rows.append(len(ids))
            sampled.append(req)
            ids.append(tokens_of(req)[p])
            pos.append(p)
            slots.append(table[p // bs] * bs + p % bs)
            lens.append(p + 1)
        padded = [t + [0] * (width - len(t)) for t in tables]
        meta.slot_mapping = _long(slots, device)
        meta.decode_tables = to_device(torch.tensor(padded, dtype=torch.int32), device)
        meta.decode_lens = to_device(torch.tensor(lens, dtype=torch.int32), device)
        meta.decode_max_len = max(lens)
    for seq in prefill:
        seq.block_table = to_device(seq.block_table, device)
    return ForwardInputs(_long(ids, device), _long(pos, device), meta, _long(rows, device), sampled)


def _long(values: list[int], device: torch.device) -> torch.Tensor:
    return to_device(torch.tensor(values, dtype=torch.int64), device)


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy without a host-device sync: a pageable copy would wait for the stream's work."""
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)
