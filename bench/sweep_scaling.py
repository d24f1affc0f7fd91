"""How a sweep scales with workers: local processes and Ray, side by side in one run.

The same sweep (policies x rates on azure-conv) runs with 1 worker, then 2, 4, ... up to the
machine's cores, on local processes and (if installed) on a local Ray runtime. Prints
simulations per second, the speed-up over one worker and the parallel efficiency, and saves
``bench/results/sweep_scaling.json``.

    python bench/sweep_scaling.py [--policies vllm,nexus] [--rates 1,2,3,4,5,6] [--no-ray]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

from twin.experiment import SimConfig
from twin.sweep import ProcessExecutor, RayExecutor, run_sweep


def worker_counts(cores: int) -> list[int]:
    counts, n = [1], 2
    while n <= cores:
        counts.append(n)
        n *= 2
    if counts[-1] != cores:
        counts.append(cores)
    return counts


def timed(specs, executor) -> float:
    start = time.perf_counter()
    table = run_sweep(specs, executor, progress=False)
    wall = time.perf_counter() - start
    if not (table["status"] == "ok").all():
        raise SystemExit("a simulation failed; run the sweep with `twin compare` to see why")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--policies", default="vllm,nexus")
    ap.add_argument("--rates", default="1,2,3,4,5,6")
    ap.add_argument("--max-requests", type=int, default=1500)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/results/sweep_scaling.json"))
    args = ap.parse_args()

    specs = [
        SimConfig(trace=args.trace, policy=p, rate_scale=float(r), max_requests=args.max_requests)
        for p in args.policies.split(",")
        for r in args.rates.split(",")
    ]
    cores = os.cpu_count() or 1
    results: dict[str, list[dict]] = {"processes": []}
    backends = [("processes", ProcessExecutor)]
    if not args.no_ray:
        try:
            import ray  # noqa: F401

            backends.append(("ray", RayExecutor))
            results["ray"] = []
        except ImportError:
            print("ray not installed: only local processes (pip install 'twin[ray]')")
    print(f"{len(specs)} simulations of {args.trace}, {cores} cores")
    base = None
    for name, make in backends:
        for workers in worker_counts(cores):
            executor = make(workers) if name == "processes" else make("auto", num_cpus=workers)
            try:
                timed(specs[:workers], executor)  # start the workers and load the trace once
                wall = timed(specs, executor)
            finally:
                executor.close()
            base = base or wall  # one local process is the reference for every backend
            row = {
                "workers": workers,
                "wall_s": wall,
                "sims_per_s": len(specs) / wall,
                "speedup": base / wall,
                "efficiency": base / wall / workers,
            }
            results[name].append(row)
            print(
                f"  {name:9s} {workers:3d} workers: {wall:6.1f} s, "
                f"{row['sims_per_s']:5.2f} sims/s, x{row['speedup']:.2f} "
                f"({row['efficiency']:.0%} efficiency)"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": dt.date.today().isoformat(),
                "machine": f"{cores} cores, {platform.machine()}, "
                f"python {platform.python_version()}",
                "sweep": {
                    "trace": args.trace,
                    "policies": args.policies,
                    "rates": args.rates,
                    "max_requests": args.max_requests,
                    "simulations": len(specs),
                },
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
