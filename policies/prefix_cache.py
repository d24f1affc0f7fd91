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
    """Refcounted content-addressed blocks over one LRU free queue.

    The queue is a list read from ``_head`` (allocation takes the oldest entries, a free
    appends); a cached block revived by a hit leaves a stale entry behind, skipped when reached.
    Only named blocks carry refcounts: an unnamed block is in at most one table, because
    sharing goes through a hash. That keeps a workload without shared content (no names) as
    cheap as the plain cache: whole tables move in and out of the queue as list slices.
    """

    prefix_caching = True

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        super().__init__(num_blocks, block_size)
        self._free = []  # unused: the free queue below replaces the base class's stack
        self._fifo: list[int] = list(range(num_blocks))
        self._head = 0
        self._nfree = num_blocks
        self._stale: dict[int, int] = {}  # block -> stale queue entries left by revivals
        self._hash_of: dict[int, int] = {}  # named block -> its hash
        self._refs: dict[int, int] = {}  # named block -> tables holding it (0: free, cached)
        self._cached: dict[int, int] = {}  # hash -> the block holding that content
        self._named: dict[int, int] = {}  # request id -> leading table blocks already named
        self.stats = PrefixStats()

    @property
    def free_blocks(self) -> int:
        return self._nfree

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self._nfree

    @property
    def cached_blocks(self) -> int:
        return len(self._cached)

    def can_grow(self, request_id: int, total_tokens: int) -> bool:
        return self.extra_blocks(request_id, total_tokens) <= self._nfree

    def is_free(self, block: int) -> bool:
        return self._refs.get(block, 1) == 0

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
        blocks = self.match(req.block_hashes or (), tokens // self.block_size) if tokens else []
        if len(blocks) * self.block_size != tokens:
            raise KVExhausted(
                f"request {rid}: {tokens} prefix tokens planned but {len(blocks)} blocks cached; "
                "the policy must plan against the cache it is committed on"
            )
        refs, stale = self._refs, self._stale
        for b in blocks:
            r = refs[b]
            if r == 0:  # revived from the free queue: its entry there goes stale
                stale[b] = stale.get(b, 0) + 1
                self._nfree -= 1
            refs[b] = r + 1
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
        if need > self._nfree:
            raise KVExhausted(
                f"request {request_id} needs {need} blocks, {self._nfree} free: "
                "the policy must check the KV budget (or preempt) before committing"
            )
        new = self._take(need)
        self._tables.setdefault(request_id, []).extend(new)
        return new

    def _take(self, need: int) -> list[int]:
        """The ``need`` oldest free queue entries that are not stale, their content evicted."""
        fifo, head, stale = self._fifo, self._head, self._stale
        new = fifo[head : head + need]
        if stale and not stale.keys().isdisjoint(new):
            new = []
            while len(new) < need:
                b = fifo[head]
                head += 1
                left = stale.get(b)
                if left:
                    if left == 1:
                        del stale[b]
                    else:
                        stale[b] = left - 1
                    continue
                new.append(b)
        else:
            head += need
        self._nfree -= need
        if head > 4096 and 2 * head > len(fifo):
            del fifo[:head]
            head = 0
        self._head = head
        if self._refs:
            self._evict(new)
        return new

    def _evict(self, blocks: list[int]) -> None:
        """Forget the content of reallocated blocks: it is about to be overwritten."""
        refs, hash_of, cached = self._refs, self._hash_of, self._cached
        for b in refs.keys() & blocks:
            del refs[b]
            h = hash_of.pop(b)
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
        refs, hash_of, cached = self._refs, self._hash_of, self._cached
        for j in range(start, upto):
            b = table[j]
            if b in hash_of:
                continue
            h = hashes[j]
            if h not in cached:  # the same content computed twice: the first copy stays named
                cached[h] = b
                hash_of[b] = h
                refs[b] = 1  # unnamed until now, so only this table holds it

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
        self._named[req.id] = upto

    def free(self, request_id: int) -> int:
        table = self._tables.pop(request_id, None)
        # Only blocks a table reused (``acquire``) or named itself (``commit``,
        # ``keep_for_recompute``) carry names, and ``_named`` counts them: a table that did
        # neither holds unnamed blocks only (each ``_take`` evicts what it hands out).
        named = self._named.pop(request_id, 0)
        if not table:
            return 0
        refs, fifo = self._refs, self._fifo
        if not named or not refs or refs.keys().isdisjoint(table):
            fifo.extend(reversed(table))
            self._nfree += len(table)
            return len(table)
        freed = 0
        for b in reversed(table):
            r = refs.get(b)
            if r is not None:
                r -= 1
                refs[b] = r
                if r:
                    continue
            fifo.append(b)
            freed += 1
        self._nfree += freed
        return freed

    def releasable(self, request_id: int) -> int:
        refs = self._refs
        return sum(1 for b in self._tables.get(request_id, ()) if refs.get(b, 1) == 1)


def make_kv_cache(policy: object, num_blocks: int, block_size: int) -> KVCache:
    """The KV cache an engine runs a policy on: with prefix caching if the policy enables it."""
    if getattr(policy, "prefix_caching", False):
        return PrefixKVCache(num_blocks, block_size)
    return KVCache(num_blocks, block_size)


HASH_SOURCE_NONE = (
    "none: the trace carries no content, so no block is shared between requests; a preempted "
    "request can find its own blocks again"
)
HASH_SOURCE_MOONCAKE = "trace block ids (Mooncake hash_ids, 512 tokens each)"
HASH_SOURCE_TOKENS = "token ids"


def prefix_summary(kv: KVCache, policy: object, hash_source: str) -> dict[str, object]:
    """summary.json's prefix-cache and preemption fields (zeros when caching is off)."""
    stats = getattr(kv, "stats", None) or PrefixStats()
    return {
        "prefix_caching": kv.prefix_caching,
        "prefix_hash_source": hash_source if kv.prefix_caching else "caching off",
        "prefix_queried_tokens": stats.queries,
        "prefix_hit_tokens": stats.hits,
        "prefix_hit_rate_tokens": stats.token_hit_rate,
        "prefix_lookups": stats.lookups,
        "prefix_hit_requests": stats.hit_lookups,
        "prefix_hit_rate_requests": stats.request_hit_rate,
        "prefix_evicted_blocks": stats.evictions,
    }
