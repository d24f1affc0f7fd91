"""What the core records as it runs: one entry per executed batch and the state timeline.

Both engines keep the same records (a simulated steady decode run of k iterations is one
entry with k step ends) and turn them into the same tables, laid out as
``twin.outputs.metrics.ITERATION_COLUMNS`` and ``TIMELINE_COLUMNS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies import Batch, BatchShape, Lane
from twin.outputs.metrics import ITERATION_COLUMNS, TIMELINE_COLUMNS


@dataclass(slots=True)
class Run:
    """A batch executing on a lane: ``steps`` identical decode iterations (1 unless steady)."""

    lane: Lane
    batch: Batch
    shape: BatchShape
    sms: int
    steps: int
    start: float
    predicted: np.ndarray  # each iteration's predicted seconds at launch (with the co-runner then)
    co_label: str = ""


def run_label(run: Run | None) -> str:
    """How an iteration names the batch running beside it on the other lane."""
    if run is None:
        return ""
    s = run.shape
    return f"{run.lane.value}:{run.sms}sm:{s.prefill_tokens}p+{s.n_decode}d"


def timeline_table(rows: list[tuple]) -> dict[str, np.ndarray]:
    if not rows:
        return {c: np.empty(0) for c in TIMELINE_COLUMNS}
    arr = np.array(rows, dtype=float)
    return {c: arr[:, i] for i, c in enumerate(TIMELINE_COLUMNS)}


def iteration_table(iters: list[tuple[Run, np.ndarray]]) -> dict[str, np.ndarray]:
    """One row per executed iteration (steady runs expanded step by step)."""
    if not iters:
        return {c: np.empty(0) for c in ITERATION_COLUMNS}
    runs = [run for run, _ in iters]
    steps = np.array([run.steps for run in runs])
    ends = np.concatenate([e for _, e in iters])
    first = np.cumsum(steps) - steps  # row of each run's first iteration
    starts = np.concatenate(([0.0], ends[:-1]))
    starts[first] = [run.start for run in runs]
    # Context read per iteration: a steady decode run grows by one token per request a step.
    step_in_run = np.arange(len(ends)) - np.repeat(first, steps)
    n_decode = np.array([run.shape.n_decode for run in runs])
    ctx0 = np.array(
        [
            run.shape.decode_ctx_sum + sum(run.shape.prefill_q) + sum(run.shape.prefill_ctx)
            for run in runs
        ]
    )

    def per_run(values: list, dtype: object = None) -> np.ndarray:
        return np.repeat(np.array(values, dtype=dtype), steps)

    return {
        "lane": per_run([run.lane.value for run in runs], object),
        "start_s": starts,
        "end_s": ends,
        "sms": per_run([run.sms for run in runs]),
        "prefill_tokens": per_run([run.shape.prefill_tokens for run in runs]),
        "prefill_chunks": per_run([len(run.shape.prefill_q) for run in runs]),
        "decode_requests": np.repeat(n_decode, steps),
        "context_tokens": np.repeat(ctx0, steps) + np.repeat(n_decode, steps) * step_in_run,
        "prefill_context_tokens": per_run([sum(run.shape.prefill_ctx) for run in runs]),
        "predicted_s": np.concatenate([run.predicted for run in runs]),
        "co_runner": per_run([run.co_label for run in runs], object),
    }
