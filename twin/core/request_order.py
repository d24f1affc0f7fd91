"""The token log's (entry, request) pairs grouped by request, in a few linear passes.

The pairs come entry after entry; the statistics and the per-request token times want them
request after request, each request's in log order: a stable sort by request position.
numpy's stable argsort is a radix sort (linear) for keys of 16 bits or fewer and a timsort
for wider ones, so the positions are sorted 16 bits at a time, least significant digit
first, each pass stable: one pass while the positions of the pairs at hand span fewer than
65,536 requests (a simulation's batches are of requests that arrived close together).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

DIGIT_BITS = 16  # the widest key numpy's stable argsort still sorts by radix
JOIN_PAIRS = 1 << 16  # pairs joined at once


@dataclass(frozen=True)
class RequestGroups:
    """Pairs grouped by request: ``order[group_at[i]:group_at[i + 1]]`` (the last group to
    the end) are the pairs, in log order, of request position ``head[i]``."""

    order: np.ndarray  # the pairs' indices, request after request, each in log order
    head: np.ndarray  # the positions that have pairs, ascending
    group_at: np.ndarray  # where each of them starts in ``order``

    @property
    def group_size(self) -> np.ndarray:
        return np.diff(np.append(self.group_at, self.order.size))


def group_by_request(pos: np.ndarray) -> RequestGroups:
    """The pairs whose request positions (non-negative) are ``pos``, grouped: ``order`` is
    what ``np.argsort(pos, kind="stable")`` returns."""
    if pos.size == 0:
        empty = np.empty(0, np.intp)
        return RequestGroups(empty, empty, empty)
    low = int(pos.min())
    span = int(pos.max()) - low
    shifted = pos - low if low else pos
    order = stable_order(shifted, span)
    if span < 4 * pos.size:  # a count per position: cheaper than comparing the sorted pairs
        counts = np.bincount(shifted, minlength=span + 1)
        head = np.flatnonzero(counts)
        sizes = counts[head]
        return RequestGroups(order, head + low, np.cumsum(sizes) - sizes)
    grouped = pos[order]
    starts = np.ones(grouped.size, dtype=bool)
    starts[1:] = grouped[1:] != grouped[:-1]
    group_at = np.flatnonzero(starts)
    return RequestGroups(order, grouped[group_at], group_at)


def stable_order(keys: np.ndarray, span: int) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for keys in ``0..span``: radix passes of
    ``DIGIT_BITS``, each digit in the narrowest unsigned type that holds it."""
    order: np.ndarray | None = None
    shift = 0
    mask = (1 << DIGIT_BITS) - 1
    while order is None or span >> shift:
        part = keys if order is None else keys[order]
        if shift:
            part = part >> shift
        if span >> shift > mask:
            part = part & mask
        digit = part.astype(np.uint8 if span >> shift < 256 else np.uint16)
        step = np.argsort(digit, kind="stable")
        order = step if order is None else order[step]
        shift += DIGIT_BITS
    return order


def entry_chunks(id_end: np.ndarray, pairs: int) -> list[tuple[int, int]]:
    """Runs of whole entries of about ``pairs`` pairs (an entry larger than that is a chunk of
    its own); ``id_end``: where each entry's ids end."""
    entries = id_end.size
    if entries == 0:
        return []
    cuts = np.searchsorted(id_end, np.arange(pairs, int(id_end[-1]), pairs))
    edges = np.unique(np.concatenate(([0], cuts + 1, [entries]))).clip(0, entries)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def grouped_chunks(
    id_end: np.ndarray,
    ids: np.ndarray,
    positions: Callable[[np.ndarray], np.ndarray],
    pairs: int,
    out: np.ndarray | None = None,
) -> Iterator[tuple[int, int, int, RequestGroups, np.ndarray]]:
    """The log's pairs a chunk of whole entries (``entry_chunks``) at a time, grouped by
    request: for each chunk its entries ``e0..e1``, where its pairs start in the log, their
    grouping (``positions`` maps the chunk's ids to request positions) and each grouped
    pair's entry, written into ``out`` at the chunk's pairs when given."""
    entry_size = np.diff(id_end, prepend=0)
    for e0, e1 in entry_chunks(id_end, pairs):
        a = int(id_end[e0 - 1]) if e0 else 0
        b = int(id_end[e1 - 1])
        entry = np.repeat(np.arange(e0, e1), entry_size[e0:e1])
        groups = group_by_request(positions(ids[a:b]))
        if out is None:
            grouped = entry[groups.order]
        else:
            grouped = np.take(entry, groups.order, out=out[a:b])
        yield e0, e1, a, groups, grouped


def join_groups(entry: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Every pair's entry, request after request and each request's in log order, from the
    groupings of consecutive chunks of the log: ``entry``, each chunk's pairs' entries
    grouped, chunk after chunk; ``groups``, each chunk's ``(head, group_size)``. Each
    request's groups, chunk after chunk, are copied in one gather."""
    if len(groups) <= 1:
        return entry
    head = np.concatenate([h for h, _ in groups])
    size = np.concatenate([s for _, s in groups])
    start = np.cumsum(size) - size
    by_request = np.argsort(head, kind="stable")  # a request's groups stay in chunk order
    start, size = start[by_request], size[by_request]
    end = np.cumsum(size)
    out = np.empty_like(entry)
    s0 = done = 0
    while s0 < size.size:  # some groups at a time: the index temporaries stay in the caches
        s1 = max(int(np.searchsorted(end, done + JOIN_PAIRS, side="right")), s0 + 1)
        index = ranges(start[s0:s1], size[s0:s1])
        np.take(entry, index, out=out[done : done + index.size])
        done += index.size
        s0 = s1
    return out


def ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The indices ``starts[i]`` to ``starts[i] + sizes[i]`` (exclusive), range after range."""
    total = int(sizes.sum())
    if total == 0:
        return np.empty(0, np.intp)
    return np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(total)
