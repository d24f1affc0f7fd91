"""Every policy on five workloads, and how the twin's answers compare with the papers' claims.

Runs ``twin compare``'s sweep (same runner, same table) for Llama-3.1-8B on the H100 latency
model over azure-conv, azure-code, mooncake (timestamped: the trace's own rate scaled) and the
ShareGPT and arXiv length traces (Poisson arrivals), then derives per trace and policy:

- capacity: the highest offered rate at which at least 90% of requests meet both SLOs;
- peak throughput and peak goodput over the sweep;
- the ratios against vllm that the papers report (throughput, goodput capacity, TTFT).

Saves ``bench/results/policies.json``, one ``compare.csv`` and plots per trace under
``bench/results/policies/``.

    python bench/compare_policies.py [--workers 2] [--traces azure-conv,mooncake] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import platform
import time
from pathlib import Path

import pandas as pd

from policies import Slo
from twin import compare as cmp
from twin.experiment import SimConfig
from twin.sweep import make_executor, run_sweep

POLICIES = ["vllm", "sglang", "static-split", "nexus", "duetserve", "disagg"]
WORKLOADS = {  # trace -> rates (multipliers of its own rate, or Poisson req/s)
    "azure-conv": [1, 2, 3, 4, 5, 6, 7],
    "azure-code": [0.5, 1, 2, 4, 6, 8],
    "mooncake": [0.1, 0.25, 0.5, 0.75, 1.0, 1.5],
    "sharegpt": [2, 4, 6, 8, 10, 12],
    "arxiv": [2, 4, 6, 8, 10, 12],
}
ATTAINMENT = 0.9


def capacity(rows: pd.DataFrame, attainment: float = ATTAINMENT) -> float:
    """Highest offered rate with SLO attainment >= ``attainment`` (0 if none)."""
    ok = rows[rows["slo_attainment"] >= attainment]
    return float(ok["offered_rps"].max()) if len(ok) else 0.0


def derive(table: pd.DataFrame) -> dict:
    out = {}
    base = table[table["policy"] == "vllm"].set_index("rate")
    vllm_ok = base[base["slo_attainment"] >= ATTAINMENT]
    ref_rate = float(vllm_ok.index.max()) if len(vllm_ok) else float(base.index.min())
    for name, rows in table.groupby("policy", sort=False):
        rows = rows.set_index("rate")
        entry = {
            "capacity_rps": capacity(rows.reset_index()),
            "peak_throughput_rps": float(rows["throughput_rps"].max()),
            "peak_goodput_rps": float(rows["goodput_rps"].max()),
            "peak_goodput_per_gpu_rps": float(rows["goodput_per_gpu_rps"].max()),
            "mean_decode_sms_at_ref": float(rows["mean_decode_sms"].get(ref_rate, math.nan)),
            "ttft_p90_at_ref_s": float(rows["ttft_p90_s"].get(ref_rate, math.nan)),
            "tbt_p90_at_ref_s": float(rows["tbt_p90_s"].get(ref_rate, math.nan)),
        }
        ttft_ratio = base["ttft_p90_s"] / rows["ttft_p90_s"]
        entry["ttft_p90_vllm_over_this"] = {f"{r:g}": float(v) for r, v in ttft_ratio.items()}
        out[name] = entry
    ref = out["vllm"]
    for entry in out.values():
        entry["vs_vllm"] = {
            "peak_throughput": entry["peak_throughput_rps"] / ref["peak_throughput_rps"],
            "peak_goodput": entry["peak_goodput_rps"] / ref["peak_goodput_rps"],
            "capacity": entry["capacity_rps"] / ref["capacity_rps"]
            if ref["capacity_rps"]
            else math.nan,
        }
    return {"reference_rate": ref_rate, "policies": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default=",".join(WORKLOADS))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--workers", type=int, default=0, help="0: all cores")
    ap.add_argument("--ray", default=None)
    ap.add_argument("--max-requests", type=int, default=1000, help="length-only traces")
    ap.add_argument("--quick", action="store_true", help="three rates per trace")
    ap.add_argument(
        "--resume", action="store_true", help="keep finished runs of an interrupted benchmark"
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()

    names = args.policies.split(",")
    slo = Slo()
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, python {platform.python_version()}",
        "model": "llama-3.1-8b",
        "slo": {"ttft_s": slo.ttft_s, "tbt_s": slo.tbt_s, "tbt_statistic": slo.tbt_statistic},
        "capacity_attainment": ATTAINMENT,
        "traces": {},
    }
    executor = make_executor(args.workers, args.ray)
    try:
        for trace in args.traces.split(","):
            rates = WORKLOADS[trace]
            if args.quick:
                rates = rates[:: max(1, len(rates) // 3)]
            base = SimConfig(trace=trace, max_requests=None, slo=slo)
            specs, mode, own_rate = cmp.build_specs(
                base, names, [float(r) for r in rates], {n: {} for n in names}
            )
            if mode == "poisson":
                specs = [dataclasses.replace(s, max_requests=args.max_requests) for s in specs]
            out = args.out / "policies" / trace
            out.mkdir(parents=True, exist_ok=True)
            if not args.resume:  # results of an older build must not be reused
                (out / "compare.parquet").unlink(missing_ok=True)
            start = time.perf_counter()
            rows = run_sweep(specs, executor, out / "compare.parquet", label=trace)
            wall = time.perf_counter() - start
            table = cmp.results_table(rows, mode, own_rate, names)
            table.to_csv(out / "compare.csv", index=False)
            # The plots name their latency model, as every report must.
            title = f"{trace}: Llama-3.1-8B, H100, {_short_label(table)}"
            cmp.latency_vs_load(table, mode, title, out / "latency_vs_load.png")
            cmp.goodput_bars(table, mode, title, out / "goodput.png")
            runs = cmp.timeline_runs(specs, table, mode)
            num_sms = next(iter(runs.values())).model.gpu.num_sms
            cmp.partition_timelines(runs, num_sms, title, out / "partition_timeline.png")
            derived = derive(table)
            derived.update(
                {
                    "rate_mode": mode,
                    "trace_rate_rps": own_rate,
                    "rates": rates,
                    "simulations": len(specs),
                    "sweep_wall_s": wall,
                    "latency_model": str(table.get("latency_model", pd.Series([""])).iloc[0]),
                }
            )
            report["traces"][trace] = derived
            print(f"\n{trace} ({len(specs)} simulations, {wall:.0f} s)")
            print(
                f"  {'policy':13s} {'capacity':>9s} {'peak thr':>9s} {'peak good':>10s} "
                f"{'cap/vllm':>9s} {'thr/vllm':>9s}"
            )
            for name, e in derived["policies"].items():
                print(
                    f"  {name:13s} {e['capacity_rps']:9.2f} {e['peak_throughput_rps']:9.2f} "
                    f"{e['peak_goodput_rps']:10.2f} {e['vs_vllm']['capacity']:9.2f} "
                    f"{e['vs_vllm']['peak_throughput']:9.2f}"
                )
    finally:
        executor.close()
    path = args.out / "policies.json"
    if path.exists():  # traces run earlier keep their results
        earlier = json.loads(path.read_text()).get("traces", {})
        report["traces"] = {**earlier, **report["traces"]}
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


def _short_label(table: pd.DataFrame) -> str:
    label = str(table.get("latency_model", pd.Series([""])).iloc[0])
    if label.startswith("operator times: measured"):
        return "measured operator tables (SM scaling modelled)"
    return "datasheet roofline" if "roofline" in label else label or "latency model unknown"


if __name__ == "__main__":
    main()
