"""How fast the twin simulates: requests and iterations per second on a full public trace.

Runs the whole Azure LLM inference conversation trace (19,366 requests, about an hour) through
the vllm policy at 1x and 4x its request rate, with steady decode fast-forward on and off,
several times each, on the measured-table latency model (the default) and the datasheet
roofline side by side, and saves the medians as JSON with the measured/datasheet ratio.

    python bench/sim_speed.py --trace ../shared/traces/azure2023_conv.csv
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import policies
import traces
from policies import Slo
from profiler import load_model_config
from twin.latency import load_latency_model
from twin.metrics import records_frame, summarize
from twin.sim import EngineConfig, Simulator


def one_run(workload: traces.Workload, policy: str, fast_forward: bool, latency: str) -> dict:
    start = time.perf_counter()
    # Building the model (reading its tables) is part of what a run costs.
    model = load_latency_model(load_model_config("llama-3.1-8b"), latency=latency)
    sim = Simulator(
        workload, policies.get(policy), model, Slo(), EngineConfig(fast_forward=fast_forward)
    )
    result = sim.run()
    simulated = time.perf_counter() - start
    summarize(records_frame(result.requests), Slo())
    total = time.perf_counter() - start
    return {
        "wall_s": total,
        "simulate_s": simulated,
        "requests": len(workload),
        "iterations": int(len(result.iterations["start_s"])),
        "events": len(sim._iters),
        "simulated_serving_s": result.end_s,
        "latency_model": model.label,
    }


def summary_row(runs: list[dict], scale: float, ff: bool, latency: str) -> dict:
    wall = statistics.median(r["wall_s"] for r in runs)
    row = {
        **runs[0],
        "rate_scale": scale,
        "fast_forward": ff,
        "latency": latency,
        "wall_s": wall,
        "walls_s": [r["wall_s"] for r in runs],
        "requests_per_s": runs[0]["requests"] / wall,
        "iterations_per_s": runs[0]["iterations"] / wall,
    }
    print(
        f"scale {scale:g}x fast_forward={ff} {latency}: {row['requests']} requests, "
        f"{row['iterations']} iterations in {wall:.2f} s -> "
        f"{row['requests_per_s']:.0f} req/s, {row['iterations_per_s']:.0f} it/s"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trace",
        default="azure-conv",
        help="trace name or path (full trace for the headline figure)",
    )
    parser.add_argument("--policy", default="vllm")
    parser.add_argument("--scales", default="1,4", help="request-rate multipliers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-stepping", action="store_true", help="skip the slow one-iteration-per-event runs"
    )
    parser.add_argument("--latency", default="measured,datasheet", help="latency models to time")
    parser.add_argument("--out", default="bench/results/sim_speed.json")
    args = parser.parse_args()
    base = traces.load(args.trace)
    rows = []
    modes = [True] if args.no_stepping else [True, False]
    for scale in (float(s) for s in args.scales.split(",")):
        workload = base.scale_rate(scale)
        for ff in modes:
            # Interleaved, so that a shared machine's load drifts over both models alike.
            latencies = args.latency.split(",")
            by_model: dict[str, list[dict]] = {lat: [] for lat in latencies}
            for _ in range(args.repeats if ff else 1):
                for lat in latencies:
                    by_model[lat].append(one_run(workload, args.policy, ff, lat))
            for latency, runs in by_model.items():
                rows.append(summary_row(runs, scale, ff, latency))
    for scale in sorted({r["rate_scale"] for r in rows}):
        for ff in modes:
            pair = {r["latency"]: r for r in rows if r["rate_scale"] == scale
                    and r["fast_forward"] == ff}
            if {"measured", "datasheet"} <= set(pair):
                print(
                    f"scale {scale:g}x fast_forward={ff}: measured tables take "
                    f"{pair['measured']['wall_s'] / pair['datasheet']['wall_s']:.2f}x "
                    "the datasheet model's wall time"
                )
        pair = {r["fast_forward"]: r for r in rows
                if r["rate_scale"] == scale and r["latency"] == "measured"}
        if len(pair) == 2:
            print(
                f"scale {scale:g}x: fast-forward is "
                f"{pair[False]['wall_s'] / pair[True]['wall_s']:.1f}x "
                "faster than one event per iteration"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": date.today().isoformat(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "trace": Path(args.trace).name,
        "policy": args.policy,
    }
    out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
