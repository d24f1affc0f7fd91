"""Figures of a profile: SM scaling per operator, bandwidth, co-run slowdown, fit quality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from policies.partition import GpuSpec  # noqa: E402
from profiler.curves import evaluate  # noqa: E402
from profiler.fit import predict_rows  # noqa: E402
from profiler.fitted import FittedModel  # noqa: E402
from profiler.grid import COPY, CORUN, ITERATION, row_shapes  # noqa: E402
from profiler.ops import OP_CLASSES  # noqa: E402

SHAPE_COLUMNS = ["op_name", "tokens", "batch", "context", "chunk", "prefix"]


PLOT_FILES = (
    "latency_vs_sms.png",
    "bandwidth_vs_sms.png",
    "predicted_vs_measured.png",
    "corun_slowdown.png",
)


def write_plots(
    directory: Path, samples: pd.DataFrame, fit: dict[str, Any], meta: dict[str, Any]
) -> list[Path]:
    """Write every figure the samples allow into ``directory``; returns the paths written."""
    directory = Path(directory)
    gpu = GpuSpec(
        str(meta["device"]), meta["num_sms"], meta["sm_granularity"], meta["memory_bytes"]
    )
    model = FittedModel(gpu, meta["model_config"], fit, meta)
    pred = predict_rows(model, samples)
    written = [
        latency_vs_sms(directory / "latency_vs_sms.png", samples, fit, model),
        bandwidth_vs_sms(directory / "bandwidth_vs_sms.png", samples, fit, model),
        predicted_vs_measured(directory / "predicted_vs_measured.png", samples, pred, model),
    ]
    corun = corun_slowdown(directory / "corun_slowdown.png", samples, model)
    if corun is not None:
        written.append(corun)
    return written


def _title(model: FittedModel) -> str:
    return f"{model.config.name} on {model.label}"


def _representative(rows: pd.DataFrame, k: int = 4) -> list[pd.DataFrame]:
    """Up to ``k`` shapes spread over the class's range of work, each with all its SM counts."""
    groups = [g for _, g in rows.groupby(SHAPE_COLUMNS, sort=False) if len(g) >= 2]
    groups.sort(key=lambda g: float(g["flops"].iloc[0] + g["bytes"].iloc[0]))
    if len(groups) <= k:
        return groups
    picks = np.unique(np.linspace(0, len(groups) - 1, k).round().astype(int))
    return [groups[i] for i in picks]


def _shape_label(g: pd.DataFrame) -> str:
    r = g.iloc[0]
    if r["chunk"]:
        return f"{r['op_name']} chunk {r['chunk']} prefix {r['prefix']}"
    if r["batch"]:
        return f"{r['op_name']} batch {r['batch']} ctx {r['context']}"
    return f"{r['op_name']} {r['tokens']} tok"


def latency_vs_sms(path: Path, samples: pd.DataFrame, fit: dict, model: FittedModel) -> Path:
    """Measured latency against SMs with the fitted roofline: the diminishing returns."""
    n = model.gpu.num_sms
    s = np.arange(1, n + 1)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for ax, op in zip(axes.flat, OP_CLASSES, strict=True):
        entry = fit["ops"][op]
        rate, bw = evaluate(entry["compute"], s), evaluate(entry["bandwidth"], s)
        for i, g in enumerate(_representative(samples[samples["op_class"] == op])):
            color = f"C{i}"
            g = g.sort_values("sms")
            r = g.iloc[0]
            curve = np.maximum(r["flops"] / rate, r["bytes"] / bw) * 1e3
            ax.plot(s, curve, color=color, lw=1.2)
            ax.errorbar(
                g["sms"],
                g["median_s"] * 1e3,
                yerr=[(g["median_s"] - g["p10_s"]) * 1e3, (g["p90_s"] - g["median_s"]) * 1e3],
                fmt="o",
                ms=3.5,
                color=color,
                label=_shape_label(g),
            )
        cv = entry.get("cv_mape")
        note = f", CV MAPE {100 * cv:.1f}%" if cv is not None else ""
        ax.set_title(
            f"{op}: {entry['compute']['form']} compute, {entry['bandwidth']['form']} "
            f"bandwidth{note}",
            fontsize=9,
        )
        ax.set_yscale("log")
        ax.set_xlabel("SMs")
        ax.set_ylabel("time per layer (ms)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Latency against SM count (points: measured p10-p90; lines: fit)\n{_title(model)}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bandwidth_vs_sms(path: Path, samples: pd.DataFrame, fit: dict, model: FittedModel) -> Path:
    n = model.gpu.num_sms
    s = np.arange(1, n + 1)
    fig, ax = plt.subplots(figsize=(8, 5))
    copy = samples[samples["op_class"] == COPY]
    if len(copy):
        ax.plot(
            copy["sms"],
            copy["bytes"] / copy["median_s"] / 1e12,
            "ks",
            ms=5,
            label="tensor copy (measured)",
        )
    if "copy" in fit.get("device", {}):
        ax.plot(
            s,
            evaluate(fit["device"]["copy"]["bandwidth"], s) / 1e12,
            "k--",
            lw=1,
            label="tensor copy (fit)",
        )
    for i, op in enumerate(OP_CLASSES):
        ax.plot(
            s,
            evaluate(fit["ops"][op]["bandwidth"], s) / 1e12,
            color=f"C{i}",
            lw=1.4,
            label=f"{op} ({fit['ops'][op]['bandwidth']['form']})",
        )
    dec = samples[samples["op_class"] == "attn_decode"]
    if len(dec):
        ax.plot(
            dec["sms"],
            dec["bytes"] / dec["median_s"] / 1e12,
            ".",
            color="C2",
            alpha=0.5,
            label="decode attention (achieved)",
        )
    sat = fit.get("summary", {}).get("saturation", {}).get("attn_decode_bandwidth_sms")
    if sat:
        ax.axvline(sat, color="C2", ls=":", lw=1)
        ax.annotate(
            f"decode attention at 95% bandwidth: {sat} SMs",
            (sat, 0.05),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            rotation=90,
            ha="right",
        )
    ax.axhline(model.hbm_bandwidth / 1e12, color="gray", ls=":", lw=1)
    ax.set_xlabel("SMs")
    ax.set_ylabel("bandwidth (TB/s)")
    ax.set_title(
        f"Achievable bandwidth against SMs (dotted: shared under co-run)\n{_title(model)}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def predicted_vs_measured(
    path: Path, samples: pd.DataFrame, pred: np.ndarray, model: FittedModel
) -> Path:
    fig, ax = plt.subplots(figsize=(7, 7))
    t = samples["median_s"].to_numpy(float)
    classes = [*OP_CLASSES, ITERATION, CORUN]
    for i, op in enumerate(classes):
        mask = (samples["op_class"] == op).to_numpy() & np.isfinite(pred)
        if not mask.any():
            continue
        mape = float(np.mean(np.abs(pred[mask] - t[mask]) / t[mask]))
        ax.scatter(
            t[mask] * 1e3,
            pred[mask] * 1e3,
            s=8,
            color=f"C{i}",
            alpha=0.7,
            label=f"{op}: MAPE {100 * mape:.1f}% (n={int(mask.sum())})",
        )
    finite = np.isfinite(pred)
    if finite.any():
        lo = float(min(t[finite].min(), pred[finite].min())) * 1e3
        hi = float(max(t[finite].max(), pred[finite].max())) * 1e3
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(f"Predicted against measured (in-sample)\n{_title(model)}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def corun_table(samples: pd.DataFrame, model: FittedModel) -> pd.DataFrame:
    """Each co-run lane's measured and predicted slowdown against the same batch alone."""
    alone = samples[samples["op_class"] == ITERATION]
    keys = ["sms", "op_name", "chunk", "prefix", "batch", "context"]
    index = {tuple(r[k] for k in keys): r["median_s"] for _, r in alone.iterrows()}
    out = []
    for _, r in samples[samples["op_class"] == CORUN].iterrows():
        own, co = row_shapes(r)
        kind = r["op_name"]
        shape = (
            (r["chunk"], r["prefix"], 0, 0)
            if kind == "prefill"
            else (0, 0, r["batch"], r["context"])
        )
        base = index.get((r["sms"], kind, *shape))
        if base is None:
            continue
        out.append(
            {
                "lane": kind,
                "sms": int(r["sms"]),
                "co_sms": int(r["co_sms"]),
                "label": f"{kind} {r['sms']} SMs | prefill {r['chunk']}+{r['prefix']}, "
                f"decode {r['batch']}x{r['context']}",
                "measured": float(r["median_s"] / base),
                "predicted": float(model.slowdown(own, int(r["sms"]), co, int(r["co_sms"]))),
            }
        )
    return pd.DataFrame(out)


def corun_slowdown(path: Path, samples: pd.DataFrame, model: FittedModel) -> Path | None:
    table = corun_table(samples, model)
    if table.empty:
        return None
    table = table.sort_values(["lane", "sms"])
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(table) + 3), 5))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["measured"], 0.4, label="measured")
    ax.bar(x + 0.2, table["predicted"], 0.4, label="predicted (fitted sharing)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(table["label"], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("co-run time / alone time")
    scale = model.fit.get("corun", {}).get("scale")
    note = f" (co-run bandwidth scale {scale:.2f})" if scale is not None else ""
    ax.set_title(f"Slowdown beside the other lane{note}\n{_title(model)}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
