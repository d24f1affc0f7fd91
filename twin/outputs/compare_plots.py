"""The figures of ``twin compare``: latency and goodput against load, partitions over time.

A policy that spends two GPUs (``disagg``) is drawn per GPU (its goodput halved), dashed and
hatched and named so, since against one-GPU policies its raw goodput compares hardware, not
scheduling. Every figure carries the latency model's label; legends sit beside the axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from twin.outputs.plot_style import finish, legend_outside, plot_steps, step_summary  # noqa: E402

KV_BINS = 300  # as plot_steps bins the lanes


def gpus_of(name: str, table: pd.DataFrame | None = None) -> int:
    """GPUs the policy spends: the table's ``gpus`` column, else the policy's own count."""
    if table is not None and "gpus" in table:
        rows = table.loc[table["policy"] == name, "gpus"]
        if len(rows):
            return int(rows.iloc[0])
    import policies

    try:
        return int(getattr(policies.get(name), "gpus", 1))
    except policies.PolicyError:
        return 1


def table_label(table: pd.DataFrame) -> str:
    if "latency_model" in table and len(table):
        return str(table["latency_model"].iloc[0])
    return ""


def _x_label(mode: str) -> str:
    return "offered load (req/s, trace rate scaled)" if mode == "scale" else "Poisson rate (req/s)"


def _series_name(name: str, gpus: int) -> str:
    return name if gpus == 1 else f"{name} (per GPU, {gpus} GPUs)"


def latency_vs_load(
    table: pd.DataFrame, mode: str, title: str, path: Path, label: str | None = None
) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    panels = (
        ("ttft_p90_s", "TTFT p90 (s)", True, False),
        ("tbt_p90_s", "TBT p90 (s)", True, False),
        ("goodput_rps", "goodput per GPU (req/s)", False, True),
        ("slo_attainment", "SLO attainment", False, False),
    )
    for ax, (col, ylabel, log, per_gpu) in zip(axes.flat, panels, strict=True):
        for name, rows in table.groupby("policy", sort=False):
            rows = rows.sort_values("offered_rps")
            gpus = gpus_of(str(name), table)
            values = rows[col] / gpus if per_gpu else rows[col]
            style = "-" if gpus == 1 else "--"
            ax.plot(
                rows["offered_rps"], values, style, marker="o", lw=1.6, ms=4,
                label=_series_name(str(name), gpus),
            )  # fmt: skip
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(_x_label(mode))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if "slo_ttft_s" in table:
        axes[0, 0].axhline(table["slo_ttft_s"].iloc[0], color="crimson", ls="--", lw=1)
        axes[0, 1].axhline(table["slo_tbt_s"].iloc[0], color="crimson", ls="--", lw=1)
    legend_outside(axes[0, 1])
    return finish(fig, title, table_label(table) if label is None else label, path)


def goodput_bars(
    table: pd.DataFrame, mode: str, title: str, path: Path, label: str | None = None
) -> Path:
    names = list(dict.fromkeys(table["policy"]))
    rates = sorted(table["rate"].unique())
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(rates) + 4), 4.4))
    x = np.arange(len(rates))
    for i, name in enumerate(names):
        rows = table[table["policy"] == name].set_index("rate")
        gpus = gpus_of(name, table)
        heights = [rows["goodput_rps"].get(r, np.nan) / gpus for r in rates]
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width, heights, width,
            label=_series_name(name, gpus), hatch="//" if gpus > 1 else None,
            edgecolor="white" if gpus > 1 else None,
        )  # fmt: skip
    ax.set_xticks(x, [f"{r:g}" for r in rates])
    ax.set_xlabel("rate (x the trace's own)" if mode == "scale" else "Poisson rate (req/s)")
    ax.set_ylabel("goodput per GPU (req/s)")
    ax.grid(alpha=0.3, axis="y")
    legend_outside(ax)
    return finish(fig, title, table_label(table) if label is None else label, path)


def partition_timelines(
    runs: dict[str, Any], num_sms: int, title: str, path: Path, label: str | None = None
) -> Path:
    """SMs per lane over time (and KV usage) for one run of each policy given."""
    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 3.2 * len(runs)), squeeze=False)
    for ax, (name, result) in zip(axes[:, 0], runs.items(), strict=True):
        tl = result.timeline
        t = tl["time_s"].to_numpy()
        plot_steps(ax, t, tl["mixed_sms"].to_numpy(), "aggregated (all SMs)")
        plot_steps(ax, t, tl["prefill_sms"].to_numpy(), "prefill lane")
        plot_steps(ax, t, tl["decode_sms"].to_numpy(), "decode lane")
        ax.set_ylim(-4, num_sms + 8)
        ax.set_ylabel("SMs")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        kv = ax.twinx()
        used, kv_label = tl["kv_usage"].to_numpy() * 100, "KV used (%)"
        kv_t = t
        if t.size > 2 * KV_BINS:  # a day of traffic changes state millions of times
            kv_t, used = step_summary(t, used, KV_BINS)[:2]
            kv_label = "KV used (%, bin mean)"
        kv.plot(kv_t, used, color="grey", lw=0.8, alpha=0.7, label=kv_label)
        kv.set_ylim(0, 105)
        kv.set_ylabel("KV used (%)")
        lines, more = ax.get_legend_handles_labels(), kv.get_legend_handles_labels()
        legend_outside(ax, handles=lines[0] + more[0], labels=lines[1] + more[1])
        # the right axis's labels need room before the legend
        ax.get_legend().set_bbox_to_anchor((1.08, 1.0))
    axes[-1, 0].set_xlabel("time (s)")
    if label is None:
        first = next(iter(runs.values()), None)
        label = str(first.summary.get("latency_model", "")) if first is not None else ""
    return finish(fig, title, label, path)
