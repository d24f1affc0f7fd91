"""Each request's token times, rebuilt from the columnar token log in a few array passes.

The log holds, entry after entry, the ids of the requests that got tokens and the entry's
token times once. A request's own times are the times of its entries, in log order: the same
values, in the same order, the engine appends to ``Request.token_times``. The (entry, request)
pairs grouped by request, stably (``group_by_request``; ``token_stats`` has grouped them
already when it kept its grouping), list each request's entries in log order, which is the
order of the output: each pair's times are then gathered in one pass, a bounded number of
tokens at a time.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from twin.core.request_order import grouped_chunks, join_groups
from twin.core.tokens import TokenLog, lookup_positions, request_positions

# Pairs expanded, and tokens gathered, at once: they bound the temporaries, and
# chunks this small stay in the caches (faster than larger ones, measured at 1x, 2x and 4x).
PAIRS_PER_CHUNK = 1 << 16
TOKENS_PER_CHUNK = 1 << 16


def request_token_times(
    log: TokenLog,
    request_ids: np.ndarray,
    entries_by_request: np.ndarray | None = None,
    tokens: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(times, ends)``: request ``i``'s token times are ``times[start:ends[i]]``, ``start``
    being ``ends[i - 1]`` (0 for the first); every id the log names must be among
    ``request_ids``. ``entries_by_request`` and ``tokens`` (``TokenStats``' of these ids and
    this log) spare grouping the pairs again."""
    request_ids = np.asarray(request_ids, dtype=np.int64)
    _, _, times, time_start, time_end = log.columns()
    steps = time_end - time_start
    if entries_by_request is None or tokens is None:
        entries_by_request, tokens = _entries_by_request(log, request_ids)
    ends = np.cumsum(tokens, dtype=np.int64)  # where each request's times end in ``out``
    out = np.empty(int(ends[-1]) if ends.size else 0, dtype=np.float64)
    # Indices into ``times`` in 32 bits where they fit: half the bytes to write and read.
    index = np.int32 if times.size < np.iinfo(np.int32).max else np.int64
    time_start, steps = time_start.astype(index), steps.astype(index)
    filled = 0
    for k0 in range(0, entries_by_request.size, PAIRS_PER_CHUNK):
        entry = entries_by_request[k0 : k0 + PAIRS_PER_CHUNK]
        size = steps[entry]
        pair_end = np.cumsum(size, dtype=np.int64)  # the chunk's tokens up to each pair's end
        _gather(out, filled, time_start[entry], size, pair_end, times)
        filled += int(pair_end[-1])
    return out, ends


def _entries_by_request(log: TokenLog, request_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's entry, request after request (each request's in log order), and the
    tokens each request got: grouped a chunk of the log at a time, then joined."""
    ids, id_end, times, time_start, time_end = log.columns()
    steps = time_end - time_start
    positions = partial(lookup_positions, request_positions(request_ids), request_ids)
    tokens = np.zeros(request_ids.size, dtype=np.int64)
    grouped = np.empty(ids.size, np.intp)
    groups_of_chunks = []
    chunks = grouped_chunks(id_end, ids, positions, PAIRS_PER_CHUNK, grouped)
    for _, _, _, groups, entries in chunks:
        tokens[groups.head] += np.add.reduceat(steps[entries], groups.group_at)
        groups_of_chunks.append((groups.head, groups.group_size))
    return join_groups(grouped, groups_of_chunks), tokens


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
        part, start = size[p0:p1], first[p0:p1]
        total = int(ends[p1 - 1]) - base
        if part.min() > 0:  # each index one past the last but where a pair starts: a cumsum
            src = np.ones(total, dtype=first.dtype)
            src[0] = start[0]
            src[ends[p0 : p1 - 1] - base] = start[1:] - start[:-1] - part[:-1] + 1
            np.cumsum(src, out=src)
        else:
            before = (ends[p0:p1] - base).astype(first.dtype) - part  # the part's earlier tokens
            src = np.repeat(start - before, part)
            src += np.arange(total, dtype=src.dtype)
        np.take(times, src, out=out[at + base : at + base + total])
        p0 = p1


def split_times(times: np.ndarray, ends: np.ndarray) -> list[np.ndarray]:
    """The per-request arrays of ``request_token_times``' layout (views of ``times``); plain
    slices, ten times faster than ``np.split``."""
    stops = ends.tolist()
    if not stops:
        return []
    return [times[a:b] for a, b in zip([0, *stops[:-1]], stops, strict=True)]
