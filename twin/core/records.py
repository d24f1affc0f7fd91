"""What the core records as it runs: one entry per executed batch and the state timeline.

Both engines keep the same records (a simulated steady decode run of k iterations is one
entry with k step ends) and turn them into the same tables, laid out as
``ITERATION_COLUMNS`` and ``TIMELINE_COLUMNS``. A finished run is kept
as scalars and its step arrays in growing columnar buffers, not as the run, batch and
request objects: a day of traffic's records cost bytes per iteration, not kilobytes.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies import Batch, BatchShape, Lane

# iterations.parquet and the run timeline: one layout for both engines.
ITERATION_COLUMNS = (
    "lane",
    "start_s",
    "end_s",
    "sms",
    "prefill_tokens",
    "prefill_chunks",
    "decode_requests",
    "context_tokens",  # every token attended to: prefill chunks' cache and new tokens, decodes'
    "prefill_context_tokens",  # cached tokens before the prefill chunks (their sum)
    "predicted_s",
    "co_runner",
)
TIMELINE_COLUMNS = (
    "time_s",
    "waiting",
    "running",
    "kv_usage",
    "mixed_sms",
    "prefill_sms",
    "decode_sms",
)


@dataclass(slots=True)
class Run:
    """A batch executing on a lane: ``steps`` identical decode iterations (1 unless steady)."""

    lane: Lane
    batch: Batch
    shape: BatchShape
    sms: int
    steps: int
    start: float
    # Each iteration's predicted seconds at launch (with the co-runner then): an array, or
    # plain floats for short runs.
    predicted: Sequence[float]
    co_label: str = ""
    # The steady decode iterations the policy promised after the batch, run in the same
    # run: after its prefill step, or past its requests' finishes (``twin.sim.phases``).
    phase: DecodePhase | None = None


@dataclass(slots=True)
class DecodePhase:
    """A run's decode iterations after its first ``offset`` steps (1: its prefill step):
    ``segments`` of steady decode batches (each one's shape and iterations) of ``members``
    (each generating up to its ``remaining`` tokens in the phase; finished ones drop out)."""

    offset: int
    segments: list[tuple[BatchShape, int]]
    members: list
    remaining: list[int]
    # With finishes inside: the members' indices latest to finish first, and how many of
    # them decode in each segment (a segment's members are the first that many).
    by_finish: list[int] | None = None
    counts: list[int] | None = None

    @property
    def whole(self) -> bool:
        """Every member decodes in every step: none finishes before the run's end."""
        return self.by_finish is None

    @property
    def runs(self) -> int:
        """How many runs this phase's run stands for: its prefill step and its segments."""
        return self.offset + len(self.segments)

    def batches(self) -> list[tuple[list, int]]:
        """Each segment's decode requests and iterations (what a policy decided for it)."""
        out, start = [], 0
        pairs = list(zip(self.members, self.remaining, strict=True))
        for _, k in self.segments:
            out.append(([m for m, r in pairs if r > start], k))
            start += k
        return out


def run_label(run: Run | None) -> str:
    """How an iteration names the batch running beside it on the other lane."""
    if run is None:
        return ""
    s = run.shape
    return f"{run.lane.value}:{run.sms}sm:{s.prefill_tokens}p+{s.n_decode}d"


def _floats(buf: array) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.float64).copy() if len(buf) else np.empty(0)


def _ints(buf: array) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.int64).copy() if len(buf) else np.empty(0, np.int64)


class Labels:
    """Strings stored once, each row holding its string's index."""

    __slots__ = ("codes", "names", "_index")

    def __init__(self) -> None:
        self.codes = array("q")
        self.names: list[str] = []
        self._index: dict[str, int] = {}

    def append(self, name: str) -> None:
        code = self._index.get(name)
        if code is None:
            name = str(name)  # a StrEnum's value, stored as the plain string it equals
            code = self._index[name] = len(self.names)
            self.names.append(name)
        self.codes.append(code)

    def values(self) -> np.ndarray:
        return np.array(self.names, dtype=object)[_ints(self.codes)]


INT_FIELDS = (
    "steps", "sms", "prefill_tokens", "prefill_chunks", "decode_requests", "context_tokens",
    "prefill_context_tokens",
)  # fmt: skip


class IterationLog:
    """Every executed run as columns: its scalars once, its step ends and predictions flat."""

    __slots__ = ("lane", "co_runner", "start", "ints", "ends", "predicted")

    def __init__(self) -> None:
        self.lane = Labels()
        self.co_runner = Labels()
        self.start = array("d")
        self.ints = array("q")  # INT_FIELDS of every run, run after run
        self.ends = array("d")
        self.predicted = array("d")

    def add(self, run: Run, step_ends: Sequence[float]) -> None:
        phase = run.phase
        if phase is None:
            self._row(run, run.shape, run.steps, run.start)
        else:  # one row per run it stands for; their steps lie end to end
            self._phase_rows(run, phase, step_ends)
        if len(step_ends) == 1:  # most runs: two scalars, cheaper than two byte copies
            self.ends.append(step_ends[0])
            self.predicted.append(run.predicted[0])
        else:
            if isinstance(step_ends, list):  # a short run's, in plain floats
                self.ends.fromlist(step_ends)
            else:
                self.ends.frombytes(np.ascontiguousarray(step_ends, dtype=np.float64).tobytes())
            if isinstance(run.predicted, list):  # a short run's, predicted step by step
                self.predicted.fromlist(run.predicted)
            else:
                self.predicted.frombytes(
                    np.ascontiguousarray(run.predicted, dtype=np.float64).tobytes()
                )

    def _phase_rows(self, run: Run, phase: DecodePhase, step_ends: Sequence[float]) -> None:
        """A row for each run a run with a decode phase stands for: its first step when it
        prefills, then the phase's segments, decode batches whose rows need no prefill
        sums."""
        i = 0
        if phase.offset:
            self._row(run, run.shape, 1, run.start)
            i = 1
        lane, co_label = run.lane, run.co_label
        sms = run.sms
        for shape, k in phase.segments:
            if shape.prefill_q:  # not a decode batch: the general row
                self._row(run, shape, k, float(step_ends[i - 1]) if i else run.start)
            else:
                self.lane.append(lane)
                self.co_runner.append(co_label)
                self.start.append(float(step_ends[i - 1]) if i else run.start)
                self.ints.extend((k, sms, 0, 0, shape.n_decode, shape.decode_ctx_sum, 0))
            i += k

    def _row(self, run: Run, s: BatchShape, steps: int, start: float) -> None:
        q = s.prefill_q
        if q:
            prefill_tokens, prefill_ctx = sum(q), sum(s.prefill_ctx)
        else:  # a decode batch
            prefill_tokens = prefill_ctx = 0
        self.lane.append(run.lane)  # a StrEnum: its own value (Labels stores the plain str)
        self.co_runner.append(run.co_label)
        self.start.append(start)
        self.ints.extend(
            (
                steps,
                run.sms,
                prefill_tokens,
                len(q),
                s.n_decode,
                s.decode_ctx_sum + prefill_tokens + prefill_ctx,
                prefill_ctx,
            )
        )

    def __len__(self) -> int:
        return len(self.start)

    @property
    def nbytes(self) -> int:
        return sum(
            a.itemsize * len(a) for a in (self.start, self.ints, self.ends, self.predicted)
        ) + 16 * len(self)

    def table(self) -> dict[str, np.ndarray]:
        """One row per executed iteration (steady runs expanded step by step)."""
        if not len(self):
            return {c: np.empty(0) for c in ITERATION_COLUMNS}
        ints = _ints(self.ints).reshape(-1, len(INT_FIELDS))
        col = {name: ints[:, i] for i, name in enumerate(INT_FIELDS)}
        steps = col["steps"]
        ends = _floats(self.ends)
        first = np.cumsum(steps) - steps  # row of each run's first iteration
        starts = np.concatenate(([0.0], ends[:-1]))
        starts[first] = _floats(self.start)
        # Context read per iteration: a steady decode run grows by one token per request a step.
        step_in_run = np.arange(len(ends)) - np.repeat(first, steps)
        n_decode = np.repeat(col["decode_requests"], steps)

        def per_run(values: np.ndarray) -> np.ndarray:
            return np.repeat(values, steps)

        return {
            "lane": per_run(self.lane.values()),
            "start_s": starts,
            "end_s": ends,
            "sms": per_run(col["sms"]),
            "prefill_tokens": per_run(col["prefill_tokens"]),
            "prefill_chunks": per_run(col["prefill_chunks"]),
            "decode_requests": n_decode,
            "context_tokens": per_run(col["context_tokens"]) + n_decode * step_in_run,
            "prefill_context_tokens": per_run(col["prefill_context_tokens"]),
            "predicted_s": _floats(self.predicted),
            "co_runner": per_run(self.co_runner.values()),
        }


class TimelineLog:
    """The serving state at every change, one float column per ``TIMELINE_COLUMNS`` entry."""

    __slots__ = ("columns", "_appends")

    def __init__(self) -> None:
        self.columns = tuple(array("d") for _ in TIMELINE_COLUMNS)
        self._appends = tuple(column.append for column in self.columns)

    def add(
        self, time_s: float, waiting: int, running: int, kv_usage: float,
        mixed_sms: int, prefill_sms: int, decode_sms: int,
    ) -> None:  # fmt: skip
        # Once per state change: spelt out, not zipped (a row is always the seven columns).
        a = self._appends
        a[0](time_s)
        a[1](waiting)
        a[2](running)
        a[3](kv_usage)
        a[4](mixed_sms)
        a[5](prefill_sms)
        a[6](decode_sms)

    def __len__(self) -> int:
        return len(self.columns[0])

    def table(self) -> dict[str, np.ndarray]:
        return {c: _floats(col) for c, col in zip(TIMELINE_COLUMNS, self.columns, strict=True)}
