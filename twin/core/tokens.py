"""Which requests got tokens when, held columnar, and the token statistics metrics need.

The core logs one entry per executed run: the ids of the requests that got tokens in it and
the run's token times once (a steady decode run's step ends are shared by all its requests),
and one entry per run for the prefills it completed (one token each, at the run's end). From
that log ``token_stats`` computes, vectorised and a bounded number of pairs at a time, what
the metrics need: per request its token count, first and last token time, TBT mean and max
(and a TBT percentile when the SLO judges one), and every inter-token gap of the finished
requests as a multiset (value, count). Gaps are the same float subtractions
``np.diff`` makes on a request's token times, so the multiset equals the concatenated gaps and
``weighted_percentile`` returns ``np.percentile``'s values bit for bit.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from twin.core.request_order import grouped_chunks, join_groups, ranges

# (entry, request) pairs processed at once: they bound the temporaries, and chunks this small
# keep them in the caches (the step takes half the time of chunks of 2M pairs, at 2x and 4x).
PAIRS_PER_CHUNK = 1 << 16
# Logs of up to this many pairs keep their pairs' grouping by request (8 bytes a pair) for the
# records' token times; larger ones are grouped again when the times are asked for.
KEEP_GROUPING_PAIRS = 1 << 23


class TokenLog:
    """Growing columnar buffers: request ids and token times, entry after entry."""

    __slots__ = ("ids", "id_end", "times", "time_end")

    def __init__(self) -> None:
        self.ids = array("i")  # the requests of every entry (4 bytes a token; "q" if need be)
        self.id_end = array("q")  # where each entry's ids end in ``ids``
        self.times = array("d")  # every entry's token times (an entry's steps stored once)
        self.time_end = array("q")  # where each entry's times end in ``times``

    def add(self, ids: Sequence[int], times: float | list[float] | np.ndarray) -> None:
        """Each of ``ids`` got one token at every one of ``times`` (one time or step ends)."""
        if not ids:
            return
        try:
            # ``fromlist`` converts a list twice as fast as ``extend`` (and leaves the array
            # as it was when an id does not fit).
            if type(ids) is list:
                self.ids.fromlist(ids)
            else:
                self.ids.extend(ids)
        except OverflowError:  # an id beyond 32 bits: widen once, keep what is logged
            del self.ids[self.id_end[-1] if self.id_end else 0 :]
            self.ids = array("q", self.ids)
            self.ids.extend(ids)
        self.id_end.append(len(self.ids))
        if isinstance(times, np.ndarray):
            self.times.frombytes(np.ascontiguousarray(times, dtype=np.float64).tobytes())
        elif isinstance(times, list):  # a short run's step ends, in plain floats
            self.times.fromlist(times)
        else:
            self.times.append(times)
        self.time_end.append(len(self.times))

    def __len__(self) -> int:
        return len(self.id_end)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The log as arrays, without copies: ``(ids, id_end, times, time_start, time_end)``;
        entry ``e``'s ids end at ``id_end[e]``, its times are
        ``times[time_start[e]:time_end[e]]``."""
        kind = f"i{self.ids.itemsize}"
        ids = np.frombuffer(self.ids, dtype=kind) if len(self.ids) else np.empty(0)
        id_end = int_array(self.id_end)
        times = np.frombuffer(self.times, dtype=np.float64) if len(self.times) else np.empty(0)
        time_end = int_array(self.time_end)
        time_start = np.concatenate(([0], time_end[:-1])).astype(np.int64)[: time_end.size]
        return ids, id_end, times, time_start, time_end

    @property
    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.ids, self.id_end, self.times, self.time_end))

    @classmethod
    def from_token_times(cls, ids: Iterable[int], token_times: Iterable) -> TokenLog:
        """A log of one entry per request, from each request's full token times (a run's
        records.parquet, or a real engine's requests)."""
        log = cls()
        ids = np.fromiter(ids, dtype=np.int64)
        times = [np.asarray(t, dtype=np.float64) for t in token_times]
        sizes = np.fromiter((t.size for t in times), dtype=np.int64, count=len(times))
        if sizes.size != ids.size:
            raise ValueError("token times: one array per request id")
        got = sizes > 0
        if got.any():
            log.ids = array("q")
            log.ids.frombytes(ids[got].tobytes())
            log.id_end.frombytes(np.arange(1, int(got.sum()) + 1, dtype=np.int64).tobytes())
            log.times.frombytes(np.concatenate([t for t in times if t.size]).tobytes())
            log.time_end.frombytes(np.cumsum(sizes[got]).tobytes())
        return log


@dataclass
class TokenStats:
    """Token statistics per request (in the order asked for) and over the finished ones."""

    tokens: np.ndarray  # tokens each request got
    first_s: np.ndarray  # its first token's time (NaN: none)
    last_s: np.ndarray  # its last token's time
    tbt_mean_s: np.ndarray  # mean gap between its tokens (NaN: fewer than two)
    tbt_max_s: np.ndarray
    gap_values: np.ndarray  # every gap of every finished request (in no order)...
    gap_counts: np.ndarray  # ...and how often each occurs
    time_values: np.ndarray  # every token time of the finished requests (with repeats)...
    time_counts: np.ndarray  # ...weighted by how many finished requests got a token then
    # "p90": each finished request's TBT percentile (NaN for the others), when asked
    tbt_percentile_s: dict[str, np.ndarray] = field(default_factory=dict)
    # The log and request ids these came from: each request's token times can be rebuilt
    log: TokenLog | None = field(default=None, repr=False)
    request_ids: np.ndarray | None = field(default=None, repr=False)
    # Each chunk's pairs' entries grouped by request, and each chunk's groups: joined into
    # ``entries_by_request`` when the token times are asked for (None: the log too large)
    grouping: tuple[np.ndarray, list] | None = field(default=None, repr=False)
    _by_request: np.ndarray | None = field(default=None, repr=False)
    _sorted: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def entries_by_request(self) -> np.ndarray | None:
        """Every (entry, request) pair's entry, request after request, each request's in log
        order: the order the log's times are rebuilt in (None: the grouping was not kept)."""
        if self._by_request is None and self.grouping is not None:
            self._by_request = join_groups(*self.grouping)
            self.grouping = None
        return self._by_request

    @property
    def gap_count(self) -> int:
        return int(self.gap_counts.sum())

    @property
    def _unweighted(self) -> bool:
        return bool((self.gap_counts == 1).all())

    def sorted_gaps(self) -> tuple[np.ndarray, np.ndarray]:
        """The gaps' values in ascending order, with their counts."""
        if self._sorted is None:
            if self._unweighted:
                self._sorted = np.sort(self.gap_values), self.gap_counts
            else:
                order = np.argsort(self.gap_values)
                self._sorted = self.gap_values[order], self.gap_counts[order]
        return self._sorted

    def gap_percentiles(self, percentiles: Sequence[float]) -> np.ndarray:
        if self._unweighted:  # each gap once: numpy's percentile itself, by selection
            return np.percentile(self.gap_values, percentiles)
        return weighted_percentile(*self.sorted_gaps(), percentiles)

    def gap_mean(self) -> float:
        n = self.gap_count
        if n == 0:
            return float("nan")
        if self._unweighted:
            return float(self.gap_values.mean())
        return float(np.dot(self.gap_values, self.gap_counts) / n)


def weighted_percentile(
    values: np.ndarray, counts: np.ndarray, percentiles: Sequence[float]
) -> np.ndarray:
    """``np.percentile(np.repeat(values, counts), percentiles)`` (linear interpolation) without
    the repeat: numpy's index and interpolation formulas applied to the ranks' values."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    q = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    if n == 0:
        return np.full(q.shape, np.nan)
    virtual = (n - 1) * q
    prev = np.floor(virtual)
    above = virtual >= n - 1
    prev_rank = np.where(above, n - 1, prev).astype(np.intp)
    next_rank = np.where(above, n - 1, prev + 1).astype(np.intp)
    gamma = virtual - prev
    cum = np.cumsum(counts)
    a = values[np.searchsorted(cum, prev_rank, side="right")]
    b = values[np.searchsorted(cum, next_rank, side="right")]
    return _lerp(a, b, gamma)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's own interpolation between neighbouring ranks (both branches, as it computes)."""
    diff = b - a
    out = np.add(a, diff * t)
    np.subtract(b, diff * (1 - t), out=out, where=t >= 0.5)
    return out


def token_stats(
    log: TokenLog,
    request_ids: np.ndarray,
    finished: np.ndarray,
    percentiles: Sequence[str] = (),
) -> TokenStats:
    """The statistics of ``log`` for ``request_ids`` (every id the log names must be among
    them); gaps and token times only of the requests ``finished`` marks. ``percentiles``
    ("p90", "p99") adds each request's TBT percentile, which needs its gaps materialised."""
    request_ids = np.asarray(request_ids, dtype=np.int64)
    finished = np.asarray(finished, dtype=bool)
    n = request_ids.size
    ids, id_end, times, time_start, time_end = log.columns()
    steps = time_end - time_start
    entry_first = times[time_start] if len(time_start) else np.empty(0)
    entry_last = times[time_end - 1] if len(time_end) else np.empty(0)
    entry_size = np.diff(id_end, prepend=0)
    position = request_positions(request_ids)

    # An entry's own gaps (between its steps), and the largest of them (NaN: one step).
    diffs = np.diff(times)
    inside = np.ones(diffs.size, dtype=bool)
    inside[time_end[:-1] - 1] = False  # the diff from one entry's last time to the next's first
    entry_max = np.full(len(steps), np.nan)
    multi = steps > 1
    if multi.any():
        masked = np.where(inside, diffs, np.nan)
        entry_max[multi] = np.fmax.reduceat(masked, time_start[multi])

    tokens = np.zeros(n, dtype=np.int64)
    first = np.full(n, np.nan)
    latest = np.full(n, -1, dtype=np.int64)  # each request's latest entry so far (-1: none)
    largest = np.full(n, np.nan)
    finished_per_entry = np.zeros(len(steps), dtype=np.int64)
    junction_values: list[np.ndarray] = []
    junction_counts: list[np.ndarray] = []
    own_gaps: list[tuple[np.ndarray, np.ndarray]] = []  # (position, gap), for percentiles
    # Each chunk's pairs' entries grouped, side by side, and its groups (for the times).
    grouped = np.empty(ids.size, np.intp) if ids.size <= KEEP_GROUPING_PAIRS else None
    groups_of_chunks: list[tuple[np.ndarray, np.ndarray]] = []

    positions = partial(lookup_positions, position, request_ids)
    chunks = grouped_chunks(id_end, ids, positions, PAIRS_PER_CHUNK, grouped)
    for e0, e1, a, groups, se in chunks:  # each request's entries, in time order
        order, head, group_at = groups.order, groups.head, groups.group_at
        group_size = groups.group_size
        f = entry_first[se]
        gap = np.empty_like(f)  # into each pair's entry from the request's previous one
        np.subtract(f[1:], entry_last[se[:-1]], out=gap[1:])
        before = latest[head]  # carried over from earlier chunks (-1: none)
        gap[group_at] = np.where(before >= 0, f[group_at] - entry_last[before], np.nan)
        tokens[head] += np.add.reduceat(steps[se], group_at)
        first[head] = np.where(np.isnan(first[head]), f[group_at], first[head])
        latest[head] = se[group_at + group_size - 1]
        group_max = np.fmax.reduceat(np.fmax(gap, entry_max[se]), group_at)
        largest[head] = np.fmax(largest[head], group_max)
        # Pairs of requests that did not finish, in grouped order: their gaps are not counted.
        unfinished = ~finished[head]
        skipped = ranges(group_at[unfinished], group_size[unfinished])
        size = entry_size[e0:e1]
        finished_per_entry[e0:e1] += size - np.bincount(se[skipped] - e0, minlength=e1 - e0)
        prev = np.empty_like(se)  # the entry of each pair's request's previous token
        prev[1:] = se[:-1]
        prev[group_at] = before
        prev[skipped] = -1  # (-1: none, or not counted)
        came_from = np.empty_like(prev)
        came_from[order] = prev  # back in the log's order: an entry's requests side by side
        starts = id_end[e0:e1] - a - size
        values, counts = _fold_junctions(came_from, starts, e0, entry_first, entry_last)
        junction_values.append(values)
        junction_counts.append(counts)
        if percentiles:
            sp = np.repeat(head, group_size)
            done = np.ones(se.size, dtype=bool)
            done[skipped] = False
            joined = prev >= 0
            own_gaps.append((sp[joined], gap[joined]))
            own_gaps.append(_inside_gaps(sp[done], se[done], time_start, steps, diffs))
        groups_of_chunks.append((head, group_size))

    last = np.full(n, np.nan)
    got = latest >= 0  # (an empty log has no last entry to read)
    last[got] = entry_last[latest[got]]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(tokens > 1, (last - first) / (tokens - 1), np.nan)
    inside_weight = np.repeat(finished_per_entry, steps - 1)
    keep = inside_weight > 0
    gap_values = np.concatenate([*junction_values, diffs[inside][keep]])
    gap_counts = np.concatenate([*junction_counts, inside_weight[keep]]).astype(np.int64)
    time_weight = np.repeat(finished_per_entry, steps)
    stats = TokenStats(
        tokens=tokens,
        first_s=first,
        last_s=last,
        tbt_mean_s=mean,
        tbt_max_s=np.where(tokens > 1, largest, np.nan),
        gap_values=gap_values,
        gap_counts=gap_counts,
        time_values=times[time_weight > 0],
        time_counts=time_weight[time_weight > 0],
        log=log,
        request_ids=request_ids,
        grouping=None if grouped is None else (grouped, groups_of_chunks),
    )
    if percentiles:
        stats.tbt_percentile_s = _per_request_percentiles(own_gaps, n, percentiles)
    return stats


def int_array(buf: array) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.int64) if len(buf) else np.empty(0, np.int64)


def request_positions(request_ids: np.ndarray) -> np.ndarray | None:
    """Sort order of the ids, to look each logged id up by binary search (None: 0..n-1)."""
    if np.array_equal(request_ids, np.arange(request_ids.size)):
        return None
    order = np.argsort(request_ids, kind="stable")
    if order.size > 1 and (np.diff(request_ids[order]) == 0).any():
        raise ValueError("token statistics: request ids must be distinct")
    return order


def lookup_positions(
    order: np.ndarray | None, request_ids: np.ndarray, ids: np.ndarray
) -> np.ndarray:
    """Each logged id's position among ``request_ids`` (``order`` None: the ids 0..n-1 in
    order, a simulation's, are their own positions)."""
    if order is None:
        if ids.size and (ids.min() < 0 or ids.max() >= request_ids.size):
            raise ValueError("token statistics: the log names a request not among those given")
        return ids
    sorted_ids = request_ids[order]
    at = np.searchsorted(sorted_ids, ids).clip(0, max(sorted_ids.size - 1, 0))
    if ids.size and (sorted_ids.size == 0 or (sorted_ids[at] != ids).any()):
        raise ValueError("token statistics: the log names a request not among those given")
    return order[at]


def _fold_junctions(
    came_from: np.ndarray,
    entry_start: np.ndarray,
    e0: int,
    entry_first: np.ndarray,
    entry_last: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The gaps into each entry from the requests' previous entries, one value per run of
    pairs, in log order, from the same previous entry into the same entry (``came_from``:
    each pair's previous entry, -1 for a pair not counted; ``entry_start``: where the
    chunk's entries, from ``e0`` on, start among its pairs). The requests of a batch mostly
    come from the same run, so a batch's gaps fold into one or a few: found in one
    comparison over the pairs, then over the runs (runs split only by uncounted pairs are
    one run)."""
    if came_from.size == 0:
        return np.empty(0), np.empty(0, np.int64)
    nonempty = entry_start < np.append(entry_start[1:], came_from.size)
    entry_start = entry_start[nonempty]
    new = np.empty(came_from.size, dtype=bool)
    new[0] = True
    np.not_equal(came_from[1:], came_from[:-1], out=new[1:])
    new[entry_start] = True
    at = np.flatnonzero(new)
    run_from = came_from[at]
    run_size = np.diff(np.append(at, came_from.size))
    run_entry = np.flatnonzero(nonempty)[np.searchsorted(entry_start, at, side="right") - 1]
    kept = run_from >= 0
    run_from, run_size, run_entry = run_from[kept], run_size[kept], run_entry[kept] + e0
    if run_from.size == 0:
        return np.empty(0), np.empty(0, np.int64)
    merged = np.ones(run_from.size, dtype=bool)
    merged[1:] = (run_entry[1:] != run_entry[:-1]) | (run_from[1:] != run_from[:-1])
    first = np.flatnonzero(merged)
    counts = np.add.reduceat(run_size, first)
    return entry_first[run_entry[first]] - entry_last[run_from[first]], counts


def _inside_gaps(
    pos: np.ndarray, entry: np.ndarray, time_start: np.ndarray, steps: np.ndarray, diffs
) -> tuple[np.ndarray, np.ndarray]:
    """Each (request, entry) pair's gaps between the entry's steps, materialised."""
    inner = steps[entry] - 1
    total = int(inner.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0)
    offsets = np.repeat(np.cumsum(inner) - inner, inner)
    index = np.repeat(time_start[entry], inner) + (np.arange(total) - offsets)
    return np.repeat(pos, inner), diffs[index]


def _per_request_percentiles(
    parts: list[tuple[np.ndarray, np.ndarray]], n: int, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Each request's TBT percentile over its own gaps: numpy's formula, one group each."""
    pos = np.concatenate([p for p, _ in parts]) if parts else np.empty(0, np.int64)
    gap = np.concatenate([g for _, g in parts]) if parts else np.empty(0)
    order = np.lexsort((gap, pos))
    pos, gap = pos[order], gap[order]
    size = np.bincount(pos, minlength=n)
    start = np.cumsum(size) - size
    has = size > 0
    out = {}
    for name in names:
        q = np.true_divide(float(name.lstrip("p")), 100)
        virtual = (size - 1) * q
        prev = np.floor(virtual)
        above = virtual >= size - 1
        lo = start + np.where(above, size - 1, prev).astype(np.int64)
        hi = start + np.where(above, size - 1, prev + 1).astype(np.int64)
        value = np.full(n, np.nan)
        if has.any():
            value[has] = _lerp(gap[lo[has]], gap[hi[has]], (virtual - prev)[has])
        out[name] = value
    return out
