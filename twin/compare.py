"""Policies side by side over a range of request rates: one table and the plots that show it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

import traces
from twin.checks import MAX_RATE  # noqa: E402
from twin.errors import TwinError  # noqa: E402
from twin.experiment import SimConfig, load_workload, simulate  # noqa: E402

# The figures live in twin.outputs.compare_plots; named here for callers that use cmp.*.
from twin.outputs.compare_plots import (  # noqa: E402, F401
    goodput_bars,
    latency_vs_load,
    partition_timelines,
)

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
    if not rates or any(not 1 / MAX_RATE <= r <= MAX_RATE for r in rates):
        raise TwinError(
            f"--rates {text!r}: every rate must be positive, in [{1 / MAX_RATE:g}, {MAX_RATE:g}]"
        )
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
    own_rate = 0.0
    mode, _ = rate_mode(base.trace, base.format)
    if mode == "scale":
        # The rate of the requests the runs replay (after --start/--duration/--max-requests),
        # not of the whole file: "offered" is this times each multiplier.
        own_rate = load_workload(dataclasses.replace(base, rate_scale=1.0)).rate()
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
        runs[f"{name} at {rate:g} {unit}"] = simulate(spec, token_times=False)  # timelines only
    return runs
