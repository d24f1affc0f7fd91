"""Mixed-batch samples: one chunked-prefill batch timed beside each of its parts alone.

Aggregated serving (vLLM, Sarathi-Serve) runs a prefill chunk and the running decodes in one
forward pass. Whether that pass costs the sum of its parts, or more (the Nexus paper's
Fig. 4a measures a mixed batch far slower than its prefill-only part), is what these samples
settle: for each shape (a chunk of ``prefill_tokens`` after ``prefix_tokens`` cached ones,
plus ``n_decode`` decodes at ``decode_context`` tokens each) the whole GPU runs the mixed
iteration, the prefill chunk alone and the decode batch alone, all eagerly (no CUDA graphs,
so launch overhead is alike in the three), each over ``layers`` layers scaled to the model's
depth as the sweep's whole iterations are.

A row is a ``samples.parquet`` row of ``op_class`` "mixed" (its ``median_s`` is the mixed
time) with the ``profile_io.MIXED_COLUMNS`` beside it; the latency model's mixed-batch
parameter is fitted from exactly those columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from policies.batch import BatchShape
from profiler.config import ModelConfig
from profiler.grid import SampleCosts
from profiler.profile_io import MIXED_COLUMNS
from profiler.sweep import summarise

MIXED = "mixed"
Shape = tuple[int, int, int, int]  # (prefill_tokens, prefix_tokens, n_decode, decode_context)


@dataclass(frozen=True)
class MixedGrid:
    shapes: tuple[Shape, ...]
    layers: int = 2

    @staticmethod
    def quick() -> MixedGrid:
        shapes = [
            (chunk, 0, n, ctx)
            for chunk in (256, 1024, 2048)
            for n in (8, 32, 128)
            for ctx in (1024, 4096)
        ]
        return MixedGrid(tuple(shapes) + ((1024, 4096, 32, 1024), (512, 8192, 64, 2048)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mixed_shape(shape: Shape) -> BatchShape:
    chunk, prefix, n, ctx = shape
    return BatchShape(
        prefill_q=(chunk,), prefill_ctx=(prefix,), n_decode=n, decode_ctx_sum=n * ctx, sampled=n + 1
    )


def mixed_row(
    cfg: ModelConfig,
    num_sms: int,
    shape: Shape,
    mixed: list[float],
    prefill: list[float],
    decode: list[float],
) -> dict[str, Any]:
    """The samples row of one shape from the three lists of repeat times."""
    chunk, prefix, n, ctx = shape
    work = SampleCosts(cfg).iteration(mixed_shape(shape))
    return {
        "op_class": MIXED,
        "op_name": MIXED,
        "sms": num_sms,
        "tokens": chunk + n,
        "batch": n,
        "context": ctx,
        "chunk": chunk,
        "prefix": prefix,
        "co_sms": 0,
        "co_kind": "",
        **summarise(mixed),
        "flops": float(work.flops),
        "bytes": float(work.bytes),
        "prefill_tokens": chunk,
        "prefix_tokens": prefix,
        "n_decode": n,
        "decode_context": ctx,
        "seconds_mixed": float(np.median(mixed)),
        "seconds_prefill_alone": float(np.median(prefill)),
        "seconds_decode_alone": float(np.median(decode)),
    }


def measure_mixed(
    cfg: ModelConfig, kernels: Any, clock: Any, stream: Any, num_sms: int, shape: Shape
) -> dict[str, Any]:
    """Time one shape's mixed iteration and both parts alone on ``stream``."""
    chunk, prefix, n, ctx = shape
    weights = [cfg.num_layers / kernels.layers, 1.0]
    builds: list[Callable[[], Any]] = [
        lambda: kernels.mixed_iteration(chunk, prefix, n, ctx),
        lambda: kernels.prefill_iteration(chunk, prefix),
        lambda: kernels.decode_iteration(n, ctx),
    ]
    times = []
    for build in builds:  # one part's tensors at a time, so the largest shapes still fit
        segments = list(build())
        clock.ready()
        times.append(clock.time(segments, weights, stream))
        del segments
    return mixed_row(cfg, num_sms, shape, *times)


def with_mixed_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every mixed-batch column, 0 in the rows that are not mixed batches."""
    out = df.copy()
    for col, kind in MIXED_COLUMNS.items():
        if col not in out.columns:
            out[col] = 0
        elif out[col].isna().any():
            missing = out[col].isna()
            if (out.loc[missing, "op_class"] == MIXED).any():
                raise ValueError(f"mixed-batch rows lack {col!r}")
            out.loc[missing, col] = 0
        out[col] = out[col].astype(np.int64 if kind == "i" else np.float64)
    return out


def mixed_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """How a mixed batch compares with the sum of its parts, over the measured shapes."""
    rows = rows[rows["op_class"] == MIXED]
    if rows.empty:
        return {"n": 0}
    parts = rows["seconds_prefill_alone"] + rows["seconds_decode_alone"]
    ratio = (rows["seconds_mixed"] / parts).to_numpy(float)
    over_prefill = (rows["seconds_mixed"] / rows["seconds_prefill_alone"]).to_numpy(float)
    return {
        "n": int(len(rows)),
        "mixed_over_sum_of_parts": {
            "min": float(ratio.min()),
            "median": float(np.median(ratio)),
            "max": float(ratio.max()),
        },
        "mixed_over_prefill_alone_median": float(np.median(over_prefill)),
    }


def write_mixed_plot(path: Any, samples: pd.DataFrame, meta: dict[str, Any]) -> Any | None:
    """Mixed-batch time against the sum of its parts alone, per shape; None without rows."""
    rows = samples[samples["op_class"] == MIXED] if "seconds_mixed" in samples else samples[:0]
    if rows.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = 1e3 * (rows["seconds_prefill_alone"] + rows["seconds_decode_alone"])
    mixed = 1e3 * rows["seconds_mixed"]
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(parts, mixed, c=np.log2(rows["n_decode"]), cmap="viridis")
    top = float(max(parts.max(), mixed.max())) * 1.1
    ax.plot([0, top], [0, top], "k--", lw=1, label="mixed = sum of parts")
    ax.set_xlabel("prefill alone + decode alone (ms)")
    ax.set_ylabel("mixed batch (ms)")
    fig.colorbar(points, label="log2 decodes in the batch")
    kind = "CPU dry run, times meaningless" if meta.get("dry_run") else "measured"
    ax.set_title(f"{meta['model_config'].name} on {meta['device']} ({kind}, {meta['date']})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
