"""Paged KV-cache block accounting shared by the simulator and the real runtime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.request import Request


class KVExhausted(RuntimeError):
    """An allocation was committed without checking that the blocks were free."""


class KVCache:
    """Fixed-size blocks handed out from a free list; a request's blocks form its block table.

    The runtime indexes its paged KV tensors with these block ids, and the simulator uses the
    same object, so both run out of memory at the same moment. A request always holds the
    blocks of its ``kv_tokens`` (an engine grows it before computing them): the decode passes
    rely on it to look up only the requests on a block boundary. This cache shares nothing:
    the prefix-caching hooks (``match``, ``acquire``, ``commit``, ``keep_for_recompute``) do
    nothing here; ``policies.prefix_cache.PrefixKVCache`` implements them.
    """

    prefix_caching = False

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(
                f"KV cache needs positive blocks and block size, got {num_blocks}, {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[int, list[int]] = {}

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        return self.used_blocks / self.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def held(self, request_id: int) -> int:
        table = self._tables.get(request_id)
        return len(table) if table else 0

    def extra_blocks(self, request_id: int, total_tokens: int) -> int:
        """Blocks still to allocate for the request to hold ``total_tokens`` tokens."""
        # Inlined ``blocks_for`` and ``held``: called for every request of every batch.
        table = self._tables.get(request_id)
        need = -(-total_tokens // self.block_size) - (len(table) if table else 0)
        return need if need > 0 else 0

    def can_grow(self, request_id: int, total_tokens: int) -> bool:
        return self.extra_blocks(request_id, total_tokens) <= len(self._free)

    def grow(self, request_id: int, total_tokens: int) -> list[int]:
        """Allocate what the request needs to hold ``total_tokens``; returns the new block ids
        in the order they join its block table."""
        need = self.extra_blocks(request_id, total_tokens)
        if need == 0:
            return []
        if need > len(self._free):
            raise KVExhausted(
                f"request {request_id} needs {need} blocks, {len(self._free)} free: "
                "the policy must check the KV budget (or preempt) before committing"
            )
        new = self._take(need)
        self._tables.setdefault(request_id, []).extend(new)
        return new

    def _take(self, n: int) -> list[int]:
        """Allocate ``n`` blocks (known to be free), in the order ``grow`` hands them out."""
        new = self._free[-n:]
        del self._free[-n:]
        new.reverse()
        return new

    def grow_decodes(self, requests: Sequence[Request], steps: int) -> None:
        """``grow`` each request to hold ``steps`` more tokens than it has, in order.

        Only the requests whose new tokens cross into a block they do not hold yet allocate
        (one in ``block_size`` per decode step), all in one allocation split among them in
        order: the same blocks, tables and evictions as growing them one by one.
        """
        bs = self.block_size
        tables = self._tables
        if steps <= bs:  # most runs: one block at most for each request
            try:
                crossing = self._crossing(requests, steps)
            except KeyError:  # a request holding no block yet
                pass
            else:
                if crossing:
                    self._check_fits(len(crossing), len(crossing))
                    for rid, block in zip(crossing, self._take(len(crossing)), strict=True):
                        tables[rid].append(block)
                return
        reach = steps + bs - 1  # blocks for k tokens: (k + bs - 1) // bs
        try:  # a request needs blocks when its new tokens overflow the ones it holds
            plan = [
                (r.id, (r.kv_tokens + reach) // bs - len(tables[r.id]))
                for r in requests
                if r.kv_tokens + steps > len(tables[r.id]) * bs
            ]
        except KeyError:  # a request holding no block yet
            held = self.held
            plan = [
                (r.id, n) for r in requests if (n := (r.kv_tokens + reach) // bs - held(r.id)) > 0
            ]
        if not plan:
            return
        total = sum(n for _, n in plan)
        self._check_fits(len(plan), total)
        blocks = self._take(total)
        i = 0
        for rid, n in plan:
            tables.setdefault(rid, []).extend(blocks[i : i + n])
            i += n

    def _crossing(self, requests: Sequence[Request], steps: int) -> list[int]:
        """The requests whose next ``steps`` tokens (at most a block's worth) overflow the
        blocks they hold, each by one block; KeyError when one holds none.

        A request always holds the blocks of its ``kv_tokens`` (an engine grows it before
        computing them), so the room left in its blocks is at least (-kv_tokens) % bs: only a
        request whose room by that count is under ``steps`` can overflow, and its table says
        whether it does.
        """
        bs = self.block_size
        tables = self._tables
        if steps == 1:  # the requests on a block boundary whose blocks are all full
            return [
                r.id
                for r in requests
                if not r.kv_tokens % bs and len(tables[r.id]) * bs == r.kv_tokens
            ]
        return [
            r.id
            for r in requests
            if -r.kv_tokens % bs < steps and len(tables[r.id]) * bs < r.kv_tokens + steps
        ]

    def room(self, requests: Sequence[Request]) -> list[int]:
        """The tokens each request can still add before it needs a new block:
        held * block_size - kv_tokens, in order (one pass, for a run's KV limit)."""
        bs = self.block_size
        tables = self._tables
        try:
            return [len(tables[r.id]) * bs - r.kv_tokens for r in requests]
        except KeyError:  # a request holding no block yet
            held = self.held
            return [held(r.id) * bs - r.kv_tokens for r in requests]

    def _check_fits(self, requests: int, blocks: int) -> None:
        if blocks > self.free_blocks:
            raise KVExhausted(
                f"{requests} decode requests need {blocks} blocks, {self.free_blocks} free: "
                "the policy must check the KV budget (or preempt) before committing"
            )

    def free(self, request_id: int) -> int:
        """Return the request's blocks to the pool; returns how many were freed."""
        table = self._tables.pop(request_id, None)
        if not table:
            return 0
        self._free.extend(reversed(table))
        return len(table)

    def block_table(self, request_id: int) -> list[int]:
        return list(self._tables.get(request_id, ()))

    def releasable(self, request_id: int) -> int:
        """Blocks that freeing the request would return to the pool (shared ones stay)."""
        return self.held(request_id)

    def admit(self, req: Request, start: int) -> None:
        """A waiting request joins the batch with its first ``start`` tokens found cached."""
        self.acquire(req, start)
        if req.admissions == 0:
            req.cached_tokens = start
        req.hit_tokens += start
        req.admissions += 1
        req.kv_tokens = start

    # Prefix caching hooks: nothing is ever cached here.
    def match(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        return []

    def is_free(self, block: int) -> bool:
        return False

    def acquire(self, req: Request, tokens: int) -> None:
        if tokens:
            raise KVExhausted(f"request {req.id}: this KV cache has no prefix caching")

    def commit(self, req: Request, tokens: int) -> None:
        return None

    def keep_for_recompute(self, req: Request) -> None:
        return None

    def budget(self) -> KVBudget:
        return KVBudget(self)


@dataclass(slots=True)
class KVBudget:
    """A policy's scratch copy of the free-block count: check-then-commit without mutating.

    A policy plans a batch against a budget; the engine then commits the batch on the real
    cache, where every allocation is known to fit.
    """

    cache: KVCache
    free: int = -1
    _extra: dict[int, int] | None = None
    _hits: dict[int, list[int]] | None = None  # request id -> cached blocks it would reuse
    _taken: set[int] | None = None  # free cached blocks this plan already revives

    def __post_init__(self) -> None:
        self.free = self.cache.free_blocks
        self._extra = {}

    def held(self, request_id: int) -> int:
        return self.cache.held(request_id) + self._extra.get(request_id, 0)

    def need(self, request_id: int, total_tokens: int) -> int:
        return max(0, self.cache.blocks_for(total_tokens) - self.held(request_id))

    def try_grow(self, request_id: int, total_tokens: int, reserve: int = 0) -> bool:
        """Plan the blocks for the request to hold ``total_tokens`` if that leaves ``reserve``
        (at least 0) blocks free; False, planning nothing, if it does not."""
        # ``need`` inlined: a policy asks this for every request of every decision.
        cache = self.cache
        table = cache._tables.get(request_id)
        need = -(-total_tokens // cache.block_size) - (len(table) if table else 0)
        extra = self._extra.get(request_id, 0)
        need -= extra
        if need < 0:
            need = 0
        if need + reserve > self.free:
            return False
        if need:
            self.free -= need
            self._extra[request_id] = extra + need
        return True

    def decode_needs(self, requests: Sequence[Request]) -> dict[int, int]:
        """The blocks ``try_grow`` would take for each request's next token: request id ->
        blocks, for the requests that need any (one crossing into a new block, mostly)."""
        cache = self.cache
        bs = cache.block_size
        if not self._extra:  # nothing planned yet: the cache's blocks are the budget's
            # ``KVCache._crossing(requests, 1)``, inlined: a block each for the requests on a
            # block boundary whose blocks are all full.
            tables = cache._tables
            try:
                return {
                    r.id: 1
                    for r in requests
                    if not r.kv_tokens % bs and len(tables[r.id]) * bs == r.kv_tokens
                }
            except KeyError:  # a request holding no block yet
                pass
        held = self.held
        return {r.id: n for r in requests if (n := (r.kv_tokens + bs) // bs - held(r.id)) > 0}

    def grant(self, needs: dict[int, int]) -> None:
        """Take the blocks of ``decode_needs``, known to fit: ``try_grow`` for each of them."""
        total = sum(needs.values())
        if total > self.free:
            raise KVExhausted(f"{total} blocks granted with {self.free} free in the plan")
        extra = self._extra
        if not extra:  # nothing planned yet (a decision's decodes, mostly)
            extra.update(needs)
        else:
            for rid, n in needs.items():
                extra[rid] = extra.get(rid, 0) + n
        self.free -= total

    def grant_decodes(self, requests: Sequence[Request]) -> bool:
        """Plan each request's next token (each listed once) if the blocks of all of them fit
        the free pool, as ``try_grow`` for each would: True; False, planning nothing, if not."""
        needs = self.decode_needs(requests)
        if sum(needs.values()) > self.free:
            return False
        self.grant(needs)
        return True

    def release(self, request_id: int) -> None:
        """Count the request's blocks (held and planned) as free again, as a preemption will.

        Blocks another request also holds (a shared prefix) stay allocated.
        """
        self.free += self.cache.releasable(request_id) + self._extra.get(request_id, 0)
        self._extra[request_id] = -self.cache.held(request_id)

    def prefix_hit(self, req: Request) -> int:
        """Leading tokens of a waiting request the cache already holds (full blocks only).

        At least one token is always left to compute, so the prefill that completes samples a
        token (vLLM caps the hit at ``num_tokens - 1``, SGLang at ``input_len - 1``).
        """
        if not self.cache.prefix_caching or req.kv_tokens or not req.block_hashes:
            return 0
        bs = self.cache.block_size
        blocks = self.cache.match(req.block_hashes, (req.prefill_target - 1) // bs)
        if not blocks:
            return 0
        if self._hits is None:
            self._hits, self._taken = {}, set()
        self._hits[req.id] = blocks
        return len(blocks) * bs

    def admit_need(self, req: Request, start: int, total_tokens: int) -> int:
        """Free blocks admitting a waiting request costs: its new blocks, plus its cached
        prefix blocks that sit unreferenced in the free pool (reviving them takes them out)."""
        hit = self._hits.get(req.id, ()) if start and self._hits else ()
        if len(hit) * self.cache.block_size != start:
            raise ValueError(f"request {req.id}: admit at {start} without a matching prefix_hit")
        revived = sum(1 for b in hit if self.cache.is_free(b) and b not in self._taken)
        return self.cache.blocks_for(total_tokens) - len(hit) + revived

    def try_admit(self, req: Request, start: int, total_tokens: int, reserve: int = 0) -> bool:
        """Plan a waiting request's first chunk: ``start`` cached tokens (from ``prefix_hit``)
        then new ones up to ``total_tokens``, if that leaves ``reserve`` blocks free."""
        if not start:
            return self.try_grow(req.id, total_tokens, reserve)
        need = self.admit_need(req, start, total_tokens)
        if need + reserve > self.free:
            return False
        self.free -= need
        self._taken.update(self._hits[req.id])
        self._extra[req.id] = self.cache.blocks_for(total_tokens) - self.cache.held(req.id)
        return True
