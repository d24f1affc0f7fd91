"""The paged KV tensors that ``policies.KVCache`` block tables index.

Per layer, K and V are ``[num_blocks + 1, block_size, kv_heads, head_dim]``. The extra last
block is scratch: padded rows of a CUDA-graphed decode batch write there, so no real
request's cache is touched and no mask is needed in the write.

With prefix caching (``policies.prefix_cache``) a cached block may sit in several block tables
at once: requests sharing a prompt prefix read the same rows in place (the block pool
refcounts them), and a request's writes only ever go to blocks past its cached prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from profiler.config import ModelConfig


@dataclass
class PagedKV:
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    num_blocks: int
    block_size: int

    @staticmethod
    def allocate(
        cfg: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> PagedKV:
        shape = (num_blocks + 1, block_size, cfg.num_kv_heads, cfg.head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        return PagedKV(k, v, num_blocks, block_size)

    @property
    def scratch_slot(self) -> int:
        return self.num_blocks * self.block_size

    @staticmethod
    def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * cfg.num_layers * block_size * cfg.kv_size * itemsize
