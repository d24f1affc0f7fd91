"""Each request's token times, rebuilt from the columnar token log in a few array passes.

The log holds, entry after entry, the ids of the requests that got tokens and the entry's
token times once. A request's own times are the times of its entries, in log order: the same
values, in the same order, the engine appends to ``Request.token_times``. Every (entry,
request) pair gets the key ``position * entries + entry``; sorted, the keys list the pairs
request after request and, within a request, in log order, which is the order of the output:
each pair's times are then gathered in one pass, a bounded number of tokens at a time.
"""

from __future__ import annotations

import numpy as np

from twin.core.tokens import TokenLog, lookup_positions, request_positions

# Pairs keyed or expanded, and tokens gathered, at once: they bound the temporaries, and
# chunks this small stay in the caches (faster than larger ones, measured at 1x and 4x).
PAIRS_PER_CHUNK = 1 << 17
TOKENS_PER_CHUNK = 1 << 18


def request_token_times(log: TokenLog, request_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(times, ends)``: request ``i``'s token times are ``times[start:ends[i]]``, ``start``
    being ``ends[i - 1]`` (0 for the first); every id the log names must be among
    ``request_ids``."""
    request_ids = np.asarray(request_ids, dtype=np.int64)
    n = request_ids.size
    ids, id_end, times, time_start, time_end = log.columns()
    steps = time_end - time_start
    entries = steps.size
    entry_size = np.diff(id_end, prepend=0)
    position = request_positions(request_ids)

    keys = np.empty(ids.size, dtype=np.int64)
    for e0, e1 in _entry_chunks(id_end):
        a, b = (int(id_end[e0 - 1]) if e0 else 0), int(id_end[e1 - 1])
        pos = lookup_positions(position, request_ids, ids[a:b].astype(np.int64))
        np.multiply(pos, entries, out=keys[a:b])
        keys[a:b] += np.repeat(np.arange(e0, e1), entry_size[e0:e1])
    # Distinct keys (a request once an entry): any sort is stable. The stable kind finds the
    # runs of ascending ids a batch mostly is and merges them, ten times faster here.
    keys.sort(kind="stable")

    out = np.empty(int(np.dot(entry_size, steps)), dtype=np.float64)
    ends = np.zeros(n, dtype=np.int64)  # where each request's times end in ``out``
    filled = 0
    for k0 in range(0, keys.size, PAIRS_PER_CHUNK):
        pos, entry = np.divmod(keys[k0 : k0 + PAIRS_PER_CHUNK], entries)
        size = steps[entry]
        pair_end = np.cumsum(size)  # the tokens of the chunk up to each pair's end
        last = np.ones(pos.size, dtype=bool)  # a request's last pair in the chunk
        last[:-1] = pos[1:] != pos[:-1]
        ends[pos[last]] = filled + pair_end[last]  # a later chunk may carry the request on
        _gather(out, filled, time_start[entry], size, pair_end, times)
        filled += int(pair_end[-1])
    return out, np.maximum.accumulate(ends)  # a request without tokens ends where the last did


def _gather(
    out: np.ndarray, at: int, first: np.ndarray, size: np.ndarray, ends: np.ndarray, times
) -> None:
    """Write the ``size`` times from ``first`` of each pair, pair after pair, into ``out`` from
    ``at`` (``ends``: the cumulative sizes)."""
    if (size == 1).all():  # single-step entries only: one time a pair
        out[at : at + size.size] = times[first]
        return
    p0 = 0
    while p0 < size.size:
        base = int(ends[p0 - 1]) if p0 else 0
        p1 = max(int(np.searchsorted(ends, base + TOKENS_PER_CHUNK, side="right")), p0 + 1)
        part = size[p0:p1]
        total = int(ends[p1 - 1]) - base
        before = ends[p0:p1] - part - base  # the tokens of this part's earlier pairs
        src = np.arange(total) + np.repeat(first[p0:p1] - before, part)
        out[at + base : at + base + total] = times[src]
        p0 = p1


def split_times(times: np.ndarray, ends: np.ndarray) -> list[np.ndarray]:
    """The per-request arrays of ``request_token_times``' layout (views of ``times``); plain
    slices, ten times faster than ``np.split``."""
    stops = ends.tolist()
    return [times[a:b] for a, b in zip([0, *stops[:-1]], stops, strict=True)]


def _entry_chunks(id_end: np.ndarray) -> list[tuple[int, int]]:
    """Runs of whole entries of about ``PAIRS_PER_CHUNK`` pairs (an entry larger than that is
    a chunk of its own)."""
    entries = id_end.size
    if entries == 0:
        return []
    cuts = np.searchsorted(id_end, np.arange(PAIRS_PER_CHUNK, int(id_end[-1]), PAIRS_PER_CHUNK))
    edges = np.unique(np.concatenate(([0], cuts + 1, [entries]))).clip(0, entries)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
