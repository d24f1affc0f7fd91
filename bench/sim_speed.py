"""How fast the twin simulates: requests and iterations per second on a full public trace.

Runs the whole Azure LLM inference conversation trace (19,366 requests, about an hour) through
the vllm policy at 1x and 4x its request rate, with steady decode fast-forward on and off,
several times each, and saves the medians as JSON. ``--prefix-caching both`` runs each case
with the policy's prefix caching off and on, side by side, and prints the slowdown.

    python bench/sim_speed.py --trace ../shared/traces/azure2023_conv.csv
    python bench/sim_speed.py --trace ../shared/traces/azure2023_conv.csv --no-stepping \
        --prefix-caching both
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
from profiler import DatasheetModel, load_model_config
from twin.metrics import records_frame, summarize
from twin.sim import EngineConfig, Simulator


def one_run(
    workload: traces.Workload, policy: str, fast_forward: bool, caching: bool | None = None
) -> dict:
    model = DatasheetModel(load_model_config("llama-3.1-8b"))
    args = {} if caching is None else {"enable_prefix_caching": caching}
    start = time.perf_counter()
    sim = Simulator(
        workload,
        policies.get(policy, **args),
        model,
        Slo(),
        EngineConfig(fast_forward=fast_forward),
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
        "prefix_caching": sim.kv.prefix_caching,
        "preemptions": sum(r.preemptions for r in result.requests),
    }


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
    parser.add_argument(
        "--prefix-caching",
        choices=("default", "on", "off", "both"),
        default="default",
        help="the policy's enable_prefix_caching (both: off and on, side by side)",
    )
    parser.add_argument("--out", default="bench/results/sim_speed.json")
    args = parser.parse_args()
    base = traces.load(args.trace)
    rows = []
    modes = [True] if args.no_stepping else [True, False]
    cachings = {"default": [None], "on": [True], "off": [False], "both": [False, True]}[
        args.prefix_caching
    ]
    for scale, ff, caching in (
        (float(s), ff, c) for s in args.scales.split(",") for ff in modes for c in cachings
    ):
        workload = base.scale_rate(scale)
        repeats = args.repeats if ff else 1
        runs = [one_run(workload, args.policy, ff, caching) for _ in range(repeats)]
        wall = statistics.median(r["wall_s"] for r in runs)
        row = {
            **runs[0],
            "rate_scale": scale,
            "fast_forward": ff,
            "wall_s": wall,
            "walls_s": [r["wall_s"] for r in runs],
            "requests_per_s": runs[0]["requests"] / wall,
            "iterations_per_s": runs[0]["iterations"] / wall,
        }
        rows.append(row)
        print(
            f"scale {scale:g}x fast_forward={ff} prefix_caching={row['prefix_caching']}: "
            f"{row['requests']} requests, {row['preemptions']} preemptions, "
            f"{row['iterations']} iterations in {wall:.2f} s -> "
            f"{row['requests_per_s']:.0f} req/s, {row['iterations_per_s']:.0f} it/s"
        )
    for scale in sorted({r["rate_scale"] for r in rows}):
        cached = {
            r["prefix_caching"]: r for r in rows if r["rate_scale"] == scale and r["fast_forward"]
        }
        if len(cached) == 2:
            print(
                f"scale {scale:g}x: with prefix caching the simulation takes "
                f"{cached[True]['wall_s'] / cached[False]['wall_s']:.3f}x the time without"
            )
        pair = {
            r["fast_forward"]: r
            for r in rows
            if r["rate_scale"] == scale and r["prefix_caching"] == rows[0]["prefix_caching"]
        }
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
        "trace": args.trace,
        "policy": args.policy,
    }
    out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
