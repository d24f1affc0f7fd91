"""A paged KV cache with automatic prefix caching, as vLLM v1's block pool keeps it.

Full blocks are content-addressed (``policies.block_hash``) and refcounted. A freed block keeps
its content and its hash: it joins the tail of one free queue, and allocation takes blocks from
the head, so the cached block freed longest ago is evicted first (LRU among unreferenced
blocks). A request frees its table in reverse, so its tail blocks sit nearer the head and go
before its prefix; a prefix block shared by a later request is freed again after it and so
outlives the leaves hanging off it. That is also the order in which SGLang's radix cache evicts
(least recently used leaves first), at block rather than token granularity.

A waiting request reuses the longest run of its leading block hashes found in the cache:
those blocks join its table (refcount +1, revived from the free queue when unreferenced) and
its prefill starts after them, while attention still reads them (the chunk's ``start``).
Blocks are named when they are scheduled (``commit``), as vLLM caches blocks at allocation:
within one forward pass each layer's new KV is written before attention reads it, so a request
admitted in the same step already finds them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from policies.block_hash import private_hashes
from policies.kvcache import KVCache, KVExhausted
from policies.request import Request


@dataclass(slots=True)
class PrefixStats:
    """Hit accounting in vLLM's terms: queries and hits count tokens, one lookup per admission."""

    queries: int = 0  # prompt tokens looked up (prompt plus generated, after a preemption)
    hits: int = 0  # of them found cached
    lookups: int = 0  # admissions
    hit_lookups: int = 0  # admissions that found at least one block
    evictions: int = 0  # cached blocks reused for other content

    @property
    def token_hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def request_hit_rate(self) -> float:
        return self.hit_lookups / self.lookups if self.lookups else 0.0


class PrefixKVCache(KVCache):
    prefix_caching = True

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        super().__init__(num_blocks, block_size)
        self._free = []  # unused: the free queue below replaces the base class's stack
        self._queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._ref = [0] * num_blocks
        self._hash_of: list[int | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}  # hash -> block holding that content
        self._named: dict[int, int] = {}  # request id -> leading table blocks already named
        self.stats = PrefixStats()

    @property
    def free_blocks(self) -> int:
        return len(self._queue)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self._queue)

    @property
    def cached_blocks(self) -> int:
        return len(self._cached)

    def can_grow(self, request_id: int, total_tokens: int) -> bool:
        return self.extra_blocks(request_id, total_tokens) <= len(self._queue)

    def is_free(self, block: int) -> bool:
        return self._ref[block] == 0

    def match(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        blocks: list[int] = []
        get = self._cached.get
        for i in range(min(max_blocks, len(hashes))):
            b = get(hashes[i])
            if b is None:
                break
            blocks.append(b)
        return blocks

    def acquire(self, req: Request, tokens: int) -> None:
        """Put the cached blocks of the request's first ``tokens`` tokens in its table."""
        rid = req.id
        if self._tables.get(rid):
            raise KVExhausted(f"request {rid} already holds blocks; only a waiting one can reuse")
        n = tokens // self.block_size
        blocks = self.match(req.block_hashes or (), n) if tokens else []
        if len(blocks) * self.block_size != tokens:
            raise KVExhausted(
                f"request {rid}: {tokens} prefix tokens planned but {len(blocks)} blocks cached; "
                "the policy must plan against the cache it is committed on"
            )
        for b in blocks:
            if self._ref[b] == 0:
                del self._queue[b]
            self._ref[b] += 1
        if blocks:
            self._tables[rid] = blocks
            self._named[rid] = len(blocks)
        s = self.stats
        s.queries += req.prefill_target
        s.hits += tokens
        s.lookups += 1
        s.hit_lookups += tokens > 0

    def grow(self, request_id: int, total_tokens: int) -> list[int]:
        need = self.extra_blocks(request_id, total_tokens)
        if need == 0:
            return []
        queue = self._queue
        if need > len(queue):
            raise KVExhausted(
                f"request {request_id} needs {need} blocks, {len(queue)} free: "
                "the policy must check the KV budget (or preempt) before committing"
            )
        popitem = queue.popitem
        new = [popitem(False)[0] for _ in range(need)]
        ref = self._ref
        for b in new:
            ref[b] = 1
        if self._cached:
            self._evict(new)
        self._tables.setdefault(request_id, []).extend(new)
        return new

    def _evict(self, blocks: list[int]) -> None:
        """Forget the content of reallocated blocks: it is about to be overwritten."""
        hash_of, cached = self._hash_of, self._cached
        for b in blocks:
            h = hash_of[b]
            if h is not None:
                hash_of[b] = None
                if cached.get(h) == b:
                    del cached[h]
                self.stats.evictions += 1

    def commit(self, req: Request, tokens: int) -> None:
        """Name the request's shareable blocks among its first ``tokens`` tokens."""
        hashes = req.block_hashes
        if not hashes:
            return
        rid = req.id
        table = self._tables.get(rid)
        if not table:
            return
        upto = min(tokens // self.block_size, len(table), len(hashes))
        start = self._named.get(rid, 0)
        if upto <= start:
            return
        self._name(table, hashes, start, upto)
        self._named[rid] = upto

    def _name(self, table: list[int], hashes: Sequence[int], start: int, upto: int) -> None:
        hash_of, cached = self._hash_of, self._cached
        for j in range(start, upto):
            b = table[j]
            if hash_of[b] is not None:
                continue
            h = hashes[j]
            if h not in cached:  # the same content computed twice: the first copy stays named
                cached[h] = b
                hash_of[b] = h

    def keep_for_recompute(self, req: Request) -> None:
        """Before a preemption frees them, name all the request's computed blocks.

        Its tokens will be the same when it is recomputed, so its own blocks (private ones
        too) can be found again if they survive in the free queue until then.
        """
        table = self._tables.get(req.id)
        if not table:
            return
        upto = min(req.kv_tokens // self.block_size, len(table))
        if upto == 0:
            return
        if len(req.block_hashes or ()) < upto:
            req.block_hashes = private_hashes(req, upto)
        self._name(table, req.block_hashes, self._named.get(req.id, 0), upto)

    def free(self, request_id: int) -> int:
        table = self._tables.pop(request_id, None)
        self._named.pop(request_id, None)
        if not table:
            return 0
        ref, queue = self._ref, self._queue
        freed = 0
        for b in reversed(table):
            r = ref[b] - 1
            ref[b] = r
            if r == 0:
                queue[b] = None
                freed += 1
        return freed

    def releasable(self, request_id: int) -> int:
        ref = self._ref
        return sum(1 for b in self._tables.get(request_id, ()) if ref[b] == 1)


def make_kv_cache(policy: object, num_blocks: int, block_size: int) -> KVCache:
    """The KV cache an engine runs a policy on: with prefix caching if the policy enables it."""
    if getattr(policy, "prefix_caching", False):
        return PrefixKVCache(num_blocks, block_size)
    return KVCache(num_blocks, block_size)
