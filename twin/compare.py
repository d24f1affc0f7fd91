"""Policies side by side over a range of request rates: one table and the plots that show it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import traces  # noqa: E402
from twin.errors import TwinError  # noqa: E402
from twin.experiment import SimConfig, simulate  # noqa: E402

TABLE_COLUMNS = (
    "policy",
    "rate",
    "offered_rps",
    "throughput_rps",
    "goodput_rps",
    "goodput_per_gpu_rps",
    "output_tokens_per_s",
    "slo_attainment",
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "tbt_p50_s",
    "tbt_p90_s",
    "tbt_p99_s",
    "e2e_p50_s",
    "e2e_p99_s",
    "mean_decode_sms",
    "partition_changes",
    "preemptions",
    "retractions",
    "prefix_hit_rate_tokens",
    "prefix_hit_rate_requests",
    "gpus",
    "finished",
    "requests",
)
LENGTH_ONLY_REQUESTS = 1000  # requests drawn from a length-only trace unless told otherwise
DYNAMIC = ("nexus", "duetserve")


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TwinError(f"--rates {text!r}: give numbers separated by commas, e.g. 1,2,4") from None
    if not rates or any(not math.isfinite(r) or r <= 0 for r in rates):
        raise TwinError(f"--rates {text!r}: every rate must be a positive number")
    return sorted(dict.fromkeys(rates))


def parse_policy_args(pairs: list[str], names: list[str]) -> dict[str, dict[str, str]]:
    """``policy.key=value`` pairs, grouped by policy."""
    out: dict[str, dict[str, str]] = {n: {} for n in names}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        policy, dot, param = key.strip().rpartition(".")
        if not sep or not dot or not param:
            raise TwinError(f"--policy-arg {pair!r} must look like policy.key=value")
        if policy not in out:
            raise TwinError(f"--policy-arg {pair!r}: {policy!r} is not among --policies")
        out[policy][param] = value.strip()
    return out


def rate_mode(trace: str, format: str | None = None) -> tuple[str, float]:
    """("scale", the trace's own rate) for timestamped traces, ("poisson", 0) for length-only."""
    try:
        wl = traces.load(trace, format=format)
    except traces.TraceError as exc:
        if "needs an arrival rate" in str(exc):
            return "poisson", 0.0
        raise
    return "scale", wl.rate()


def build_specs(
    base: SimConfig, policies_: list[str], rates: list[float], args: dict[str, dict[str, str]]
) -> tuple[list[SimConfig], str, float]:
    """One spec per policy and rate: multipliers of a real trace, or Poisson req/s."""
    mode, own_rate = rate_mode(base.trace, base.format)
    if mode == "poisson" and base.max_requests is None:
        base = dataclasses.replace(base, max_requests=LENGTH_ONLY_REQUESTS)
    specs = []
    for name in policies_:
        for rate in rates:
            change = {"rate_scale": rate} if mode == "scale" else {"rate": rate}
            specs.append(
                dataclasses.replace(
                    base, policy=name, policy_args=dict(args.get(name, {})), **change
                )
            )
    return specs, mode, own_rate


def results_table(
    rows: pd.DataFrame, mode: str, own_rate: float, order: list[str] | None = None
) -> pd.DataFrame:
    """The comparison table: one row per policy and rate."""
    ok = rows[rows["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    ok["rate"] = ok["rate_scale"] if mode == "scale" else ok["rate"]
    ok["offered_rps"] = ok["rate"] * own_rate if mode == "scale" else ok["rate"]
    cols = [c for c in TABLE_COLUMNS if c in ok] + [c for c in ok if c not in TABLE_COLUMNS]
    rank = {name: i for i, name in enumerate(order or sorted(ok["policy"].unique()))}
    ok["_order"] = ok["policy"].map(rank)
    ok = ok.sort_values(["_order", "rate"]).drop(columns="_order")
    return ok[cols].reset_index(drop=True)


def timeline_rate(table: pd.DataFrame, policy: str) -> float:
    """The highest rate at which ``policy`` still met the SLOs for at least half the requests."""
    rows = table[table["policy"] == policy].sort_values("rate")
    good = rows[rows["slo_attainment"] >= 0.5]
    if not good.empty:
        return float(good["rate"].iloc[-1])
    return float(rows["rate"].iloc[len(rows) // 2])


# ----------------------------------------------------------------------------- plots
def _x_label(mode: str) -> str:
    return "offered load (req/s, trace rate scaled)" if mode == "scale" else "Poisson rate (req/s)"


def latency_vs_load(table: pd.DataFrame, mode: str, title: str, path: Path) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = (
        ("ttft_p90_s", "TTFT p90 (s)", True),
        ("tbt_p90_s", "TBT p90 (s)", True),
        ("goodput_rps", "goodput (req/s)", False),
        ("slo_attainment", "SLO attainment", False),
    )
    for ax, (col, label, log) in zip(axes.flat, panels, strict=True):
        for name, rows in table.groupby("policy", sort=False):
            rows = rows.sort_values("offered_rps")
            ax.plot(rows["offered_rps"], rows[col], marker="o", lw=1.6, ms=4, label=name)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(_x_label(mode))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if "slo_ttft_s" in table:
        axes[0, 0].axhline(table["slo_ttft_s"].iloc[0], color="crimson", ls="--", lw=1)
        axes[0, 1].axhline(table["slo_tbt_s"].iloc[0], color="crimson", ls="--", lw=1)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def goodput_bars(table: pd.DataFrame, mode: str, title: str, path: Path) -> Path:
    names = list(dict.fromkeys(table["policy"]))
    rates = sorted(table["rate"].unique())
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rates) + 3), 4.2))
    x = np.arange(len(rates))
    for i, name in enumerate(names):
        rows = table[table["policy"] == name].set_index("rate")
        heights = [rows["goodput_rps"].get(r, np.nan) for r in rates]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, heights, width, label=name)
    ax.set_xticks(x, [f"{r:g}" for r in rates])
    ax.set_xlabel("rate (x the trace's own)" if mode == "scale" else "Poisson rate (req/s)")
    ax.set_ylabel("goodput (req/s)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=min(3, len(names)))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def partition_timelines(runs: dict[str, Any], num_sms: int, title: str, path: Path) -> Path:
    """SMs per lane over time (and KV usage) for one run of each policy given."""
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.2 * len(runs)), squeeze=False)
    for ax, (label, result) in zip(axes[:, 0], runs.items(), strict=True):
        tl = result.timeline
        t = tl["time_s"].to_numpy()
        ax.step(t, tl["mixed_sms"], where="post", lw=1.2, label="aggregated (all SMs)")
        ax.step(t, tl["prefill_sms"], where="post", lw=1.2, label="prefill lane")
        ax.step(t, tl["decode_sms"], where="post", lw=1.2, label="decode lane")
        ax.set_ylim(-4, num_sms + 8)
        ax.set_ylabel("SMs")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        kv = ax.twinx()
        kv.plot(t, tl["kv_usage"] * 100, color="grey", lw=0.8, alpha=0.7, label="KV used (%)")
        kv.set_ylim(0, 105)
        kv.set_ylabel("KV used (%)")
        lines = ax.get_legend_handles_labels()
        more = kv.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline_runs(specs: list[SimConfig], table: pd.DataFrame, mode: str) -> dict[str, Any]:
    """Re-run nexus and duetserve (else the first two policies) at a telling rate."""
    present = list(dict.fromkeys(table["policy"]))
    chosen = [p for p in DYNAMIC if p in present] or present[:2]
    runs = {}
    for name in chosen:
        rate = timeline_rate(table, name)
        key = "rate_scale" if mode == "scale" else "rate"
        spec = next(s for s in specs if s.policy == name and getattr(s, key) == rate)
        unit = "x trace rate" if mode == "scale" else "req/s"
        runs[f"{name} at {rate:g} {unit}"] = simulate(spec)
    return runs
