"""PNG figures of a run: latency CDFs and the run over time."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from policies import Slo  # noqa: E402
from twin.core.tokens import TokenStats  # noqa: E402
from twin.outputs.metrics import (  # noqa: E402
    judged_tbt,
    records_tokens,
    request_metrics,
    tbt_columns,
)
from twin.outputs.plot_style import finish, legend_outside, plot_steps  # noqa: E402


def tbt_statistic_per_request(records: pd.DataFrame, statistic: str) -> np.ndarray:
    """Each finished request's TBT statistic, the value the TBT SLO judges (requests with a
    gap between tokens)."""
    done = records[records["status"] == "finished"]
    judged = judged_tbt(done, statistic)
    has_gap = tbt_columns(done)[0]
    return judged[~np.isnan(has_gap)]


CDF_POINTS = 2048  # a curve of more points draws no differently, only slower


def cdf_points(values: np.ndarray, points: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF of ``values`` at no more than ``points`` evenly spaced ranks (the
    smallest and largest included), so a run of millions of token gaps draws as fast as a few."""
    xs = np.sort(np.asarray(values, dtype=float))
    return weighted_cdf_points(xs, np.ones(xs.size, dtype=np.int64), points)


def weighted_cdf_points(
    values: np.ndarray, counts: np.ndarray, points: int = CDF_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """``cdf_points`` of sorted ``values`` each occurring ``counts`` times, without repeating
    them: a billion gaps held as distinct values and counts draw at the same ranks."""
    cum = np.cumsum(np.asarray(counts, dtype=np.int64))
    n = int(cum[-1]) if cum.size else 0
    if n == 0:
        return np.empty(0), np.empty(0)
    ranks = np.unique(np.linspace(0, n - 1, min(n, points)).round().astype(np.int64))
    return values[np.searchsorted(cum, ranks, side="right")], (ranks + 1) / n


def latency_cdfs(
    records: pd.DataFrame,
    slo: Slo,
    title: str,
    path: Path,
    label: str = "",
    tokens: TokenStats | None = None,
) -> Path:
    """TTFT per request, and per request the TBT statistic the SLO judges (every gap faint,
    from ``tokens``' multiset of gaps, else from the records' token times)."""
    per = request_metrics(records, slo)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    judged = tbt_statistic_per_request(records, slo.tbt_statistic)
    for ax, values, target, name in (
        (axes[0], per["ttft_s"].to_numpy(), slo.ttft_s, "TTFT (s), per request"),
        (axes[1], judged, slo.tbt_s, f"TBT {slo.tbt_statistic} per request (s)"),
    ):
        if values.size:
            ax.plot(*cdf_points(values), lw=1.6, label="requests")
            ax.set_xscale("log")
        ax.axvline(target, color="crimson", ls="--", lw=1, label=f"SLO {target:g} s")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    if tokens is None:
        tokens = records_tokens(records, slo.tbt_statistic)
    if tokens.gap_count:
        axes[1].plot(
            *weighted_cdf_points(*tokens.sorted_gaps()),
            lw=1,
            color="grey",
            alpha=0.6,
            label="every gap (not judged)",
        )
    for ax in axes:
        legend_outside(ax)
    return finish(fig, title, label, path)


def run_timeline(
    tokens: TokenStats,
    timeline: pd.DataFrame,
    title: str,
    path: Path,
    num_sms: int,
    label: str = "",
) -> Path:
    """Output token rate (from the finished requests' token times, binned), queues, KV use
    and the partition over the run."""
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    end = float(timeline["time_s"].max()) if len(timeline) else 1.0
    bin_s = max(end / 200.0, 1e-3)
    if tokens.time_values.size:
        counts, edges = np.histogram(
            tokens.time_values,
            bins=np.arange(0.0, end + bin_s, bin_s),
            weights=tokens.time_counts.astype(float),
        )
        axes[0].plot(edges[:-1], counts / bin_s, lw=1)
    axes[0].set_ylabel("output tok/s")
    t = timeline["time_s"].to_numpy()
    plot_steps(axes[1], t, timeline["waiting"].to_numpy(), "waiting", lw=1)
    plot_steps(axes[1], t, timeline["running"].to_numpy(), "running", lw=1)
    axes[1].set_ylabel("requests")
    plot_steps(axes[2], t, 100 * timeline["kv_usage"].to_numpy(), "KV used", "tab:purple", lw=1)
    axes[2].set_ylabel("KV used (%)")
    axes[2].set_ylim(0, 105)
    for col, name in (
        ("mixed_sms", "aggregated"),
        ("prefill_sms", "prefill lane"),
        ("decode_sms", "decode lane"),
    ):
        plot_steps(axes[3], t, timeline[col].to_numpy(), name)
    axes[3].set_ylim(0, num_sms * 1.05)
    axes[3].set_ylabel("SMs")
    axes[3].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        legend_outside(ax)
    return finish(fig, title, label, path)


def validation_figures(
    real_iterations, real_records, sim_records, model, slo, title, out: Path, sim_tokens=None
):
    """Predicted against measured iteration time, overlaid latency CDFs, error over time
    (``sim_tokens``: the simulation's token statistics, when its records lack token times)."""
    from profiler.calibrate import alone_rows, predict_rows

    title = "\n".join(textwrap.wrap(title, 70))
    rows = alone_rows(real_iterations)
    measured = (rows["end_s"] - rows["start_s"]).to_numpy(float)
    predicted = predict_rows(model, rows) if len(rows) else np.empty(0)
    paths = []

    fig, ax = plt.subplots(figsize=(5, 4.6))
    if measured.size:
        ax.scatter(measured * 1e3, predicted * 1e3, s=6, alpha=0.5)
        lo = max(1e-3, min(measured.min(), predicted.min()) * 1e3)
        hi = max(measured.max(), predicted.max()) * 1e3
        ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--", label="exact")
        ax.set_xscale("log")
        ax.set_yscale("log")
        legend_outside(ax)
    ax.set_xlabel("measured iteration time (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "iteration_predicted_vs_measured.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for records, label, tokens in (
        (real_records, "real", None),
        (sim_records, "simulated", sim_tokens),
    ):
        per = request_metrics(records, slo)
        ttft = per["ttft_s"].to_numpy()
        if ttft.size:
            axes[0].plot(*cdf_points(ttft), lw=1.6, label=label)
        tokens = tokens if tokens is not None else records_tokens(records, slo.tbt_statistic)
        if tokens.gap_count:
            axes[1].plot(
                *weighted_cdf_points(*tokens.sorted_gaps()), lw=1.6, label=label
            )
    for ax, name in zip(axes, ("TTFT (s)", "time between tokens (s)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
        legend_outside(ax)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths.append(out / "latency_cdfs_real_vs_sim.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.4))
    if measured.size:
        rel = (predicted - measured) / measured
        t = rows["start_s"].to_numpy(float)
        ax.scatter(t, rel * 100, s=4, alpha=0.35)
        window = max(1, len(rel) // 50)
        smooth = pd.Series(rel).rolling(window, min_periods=1, center=True).median()
        ax.plot(t, smooth * 100, color="crimson", lw=1.5, label=f"rolling median ({window})")
        legend_outside(ax)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("iteration error (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "iteration_error_over_time.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths
