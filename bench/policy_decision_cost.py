"""What one decision costs each policy, and what each policy costs the simulator.

Part 1 times one decision (``partition`` plus ``next_batch`` for every lane of the chosen
partition) on three hand-built engine states, light to overloaded, with the planning caches
cleared so every call plans from scratch. Part 2 simulates the same trace with every policy,
side by side in one run, and prints each policy's wall time over vllm's.

    python bench/policy_decision_cost.py [--trace azure-conv] [--rate-scale 1,4] [--out F]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import policies
from policies import EngineView, KVCache, Request, Slo, Status
from profiler import DatasheetModel, load_model_config
from twin.experiment import SimConfig, simulate

POLICIES = ["vllm", "sglang", "static-split", "nexus", "duetserve", "disagg"]
STATES = {  # decoding requests, their context, waiting prompts, KV blocks held by others
    "light": (16, 800, 1, 0.1),
    "busy": (128, 1500, 20, 0.5),
    "overloaded": (256, 1200, 200, 0.85),
}


def make_view(model, state: str, num_blocks: int = 25_000) -> EngineView:
    n_dec, ctx, n_wait, kv_used = STATES[state]
    kv = KVCache(num_blocks, 16)
    running = []
    for i in range(n_dec):
        kv.grow(i, ctx)
        running.append(Request(i, 0.0, ctx, 400, kv_tokens=ctx, generated=1, status=Status.RUNNING))
    filler = int(kv_used * num_blocks) - kv.used_blocks
    if filler > 0:
        kv.grow(-1, filler * 16)
    waiting = [Request(10_000 + i, i * 0.01, 500 + 97 * i % 4000, 200) for i in range(n_wait)]
    return EngineView(
        now=5.0,
        waiting=waiting,
        running=running,
        kv=kv,
        partition=model.gpu.split_with_decode(64),
        in_flight={},
        slo=Slo(),
        model=model,
        gpu=model.gpu,
    )


def decision_cost(name: str, view: EngineView, budget_s: float = 0.5) -> float:
    """Mean seconds of one decision, planning caches cleared before each."""
    pol = policies.get(name)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        if hasattr(pol, "_last"):
            pol._last = None
        part = pol.partition(view)
        for lane in part.lanes:
            pol.next_batch(view, lane)
        calls += 1
    return (time.perf_counter() - start) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--rate-scale", default="1,4", help="comma-separated rate multipliers")
    ap.add_argument("--out", type=Path, default=Path("bench/results/policy_decision_cost.json"))
    args = ap.parse_args()

    model = DatasheetModel(load_model_config("llama-3.1-8b"))
    decisions = {}
    print(f"{'policy':13s}" + "".join(f"{s:>14s}" for s in STATES) + "   (µs per decision)")
    for name in POLICIES:
        decisions[name] = {s: decision_cost(name, make_view(model, s)) for s in STATES}
        cells = "".join(f"{decisions[name][s] * 1e6:14.1f}" for s in STATES)
        print(f"{name:13s}{cells}")

    speed = {}
    for scale in [float(x) for x in args.rate_scale.split(",")]:
        rows = {}
        for name in POLICIES:
            cfg = SimConfig(trace=args.trace, policy=name, rate_scale=scale)
            start = time.perf_counter()
            result = simulate(cfg)
            wall = time.perf_counter() - start
            rows[name] = {
                "wall_s": wall,
                "sim_wall_s": result.summary["wall_s"],
                "iterations": result.summary["iterations"],
                "requests": result.summary["requests"],
            }
        base = rows["vllm"]["sim_wall_s"]
        print(f"\n{args.trace} at {scale}x rate: simulation wall time relative to vllm")
        for name, row in rows.items():
            row["vs_vllm"] = row["sim_wall_s"] / base
            print(
                f"  {name:13s} {row['sim_wall_s']:6.2f} s  {row['vs_vllm']:4.2f}x  "
                f"({row['iterations']} iterations)"
            )
        speed[f"{scale:g}x"] = rows

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": dt.date.today().isoformat(),
                "machine": f"{platform.processor() or platform.machine()}, "
                f"python {platform.python_version()}",
                "latency_model": model.label,
                "decision_s": decisions,
                "states": {
                    k: dict(zip(("decoding", "ctx", "waiting", "kv_used"), v, strict=True))
                    for k, v in STATES.items()
                },
                "trace": args.trace,
                "simulation": speed,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
