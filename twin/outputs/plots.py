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
from twin.outputs.metrics import all_gaps, request_metrics  # noqa: E402


def latency_cdfs(records: pd.DataFrame, slo: Slo, title: str, path: Path) -> Path:
    per = request_metrics(records, slo)
    gaps = all_gaps(records)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, values, target, label in (
        (axes[0], per["ttft_s"].to_numpy(), slo.ttft_s, "TTFT (s)"),
        (axes[1], gaps, slo.tbt_s, "time between tokens (s)"),
    ):
        if values.size:
            xs = np.sort(values)
            ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, lw=1.6)
            ax.set_xscale("log")
        ax.axvline(target, color="crimson", ls="--", lw=1, label=f"SLO {target:g} s")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_timeline(
    records: pd.DataFrame, timeline: pd.DataFrame, title: str, path: Path, num_sms: int
) -> Path:
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    done = records[records["status"] == "finished"]
    times = (
        np.concatenate([np.asarray(t, float) for t in done["token_times_s"]])
        if len(done)
        else np.empty(0)
    )
    end = float(timeline["time_s"].max()) if len(timeline) else 1.0
    bin_s = max(end / 200.0, 1e-3)
    if times.size:
        counts, edges = np.histogram(times, bins=np.arange(0.0, end + bin_s, bin_s))
        axes[0].plot(edges[:-1], counts / bin_s, lw=1)
    axes[0].set_ylabel("output tok/s")
    t = timeline["time_s"].to_numpy()
    axes[1].step(t, timeline["waiting"], where="post", label="waiting", lw=1)
    axes[1].step(t, timeline["running"], where="post", label="running", lw=1)
    axes[1].set_ylabel("requests")
    axes[1].legend(loc="upper right")
    axes[2].step(t, 100 * timeline["kv_usage"], where="post", lw=1, color="tab:purple")
    axes[2].set_ylabel("KV used (%)")
    axes[2].set_ylim(0, 105)
    axes[3].step(t, timeline["mixed_sms"], where="post", label="aggregated", lw=1.2)
    axes[3].step(t, timeline["prefill_sms"], where="post", label="prefill lane", lw=1.2)
    axes[3].step(t, timeline["decode_sms"], where="post", label="decode lane", lw=1.2)
    axes[3].set_ylim(0, num_sms * 1.05)
    axes[3].set_ylabel("SMs")
    axes[3].set_xlabel("time (s)")
    axes[3].legend(loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def validation_figures(real_iterations, real_records, sim_records, model, slo, title, out: Path):
    """Predicted against measured iteration time, overlaid latency CDFs, error over time."""
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
        ax.legend(loc="upper left")
    ax.set_xlabel("measured iteration time (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "iteration_predicted_vs_measured.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for records, label in ((real_records, "real"), (sim_records, "simulated")):
        per = request_metrics(records, slo)
        for ax, values in ((axes[0], per["ttft_s"].to_numpy()), (axes[1], all_gaps(records))):
            if values.size:
                xs = np.sort(values)
                ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, lw=1.6, label=label)
    for ax, name in zip(axes, ("TTFT (s)", "time between tokens (s)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths.append(out / "latency_cdfs_real_vs_sim.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.4))
    if measured.size:
        rel = (predicted - measured) / measured
        t = rows["start_s"].to_numpy(float)
        ax.scatter(t, rel * 100, s=4, alpha=0.35)
        window = max(1, len(rel) // 50)
        smooth = pd.Series(rel).rolling(window, min_periods=1, center=True).median()
        ax.plot(t, smooth * 100, color="crimson", lw=1.5, label=f"rolling median ({window})")
        ax.legend(loc="upper right")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("iteration error (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "iteration_error_over_time.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
