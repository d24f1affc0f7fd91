"""Where a long simulation spends its time and memory: one run under cProfile.

Tiles a trace end to end (each copy starts one mean inter-arrival gap after the last one ends)
until it holds at least ``--requests`` requests, scales its rate, simulates it with one policy
and the default latency model, and prints CPU and wall time, peak resident memory and the
functions with the most own time and cumulative time. Run it once per configuration:

    python bench/sim_profile.py --trace PATH/TO/azure2023_conv.csv --requests 100000 \\
        --policy vllm --scale 1 --top 25

``--no-profile`` times the run without cProfile (whose overhead is about 2x on this code).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import sys
import time

import numpy as np


def tiled(trace: str, requests: int):
    import traces
    from traces.workload import Workload

    base = traces.load(trace)
    copies = -(-requests // len(base))
    span = base.duration_s() + base.duration_s() / max(1, len(base) - 1)
    return Workload(
        np.concatenate([base.arrival_s + i * span for i in range(copies)]),
        np.tile(base.prompt_tokens, copies),
        np.tile(base.output_tokens, copies),
        name=f"{base.name} x{copies}",
        source=base.source,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--policy", default="vllm")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args(argv)
    if args.requests < 1:
        raise SystemExit(f"--requests {args.requests}: give at least 1")
    if not (args.scale > 0 and args.scale != float("inf")):
        raise SystemExit(f"--scale {args.scale}: give a positive, finite rate multiplier")

    import policies
    from policies import Slo
    from profiler import load_model_config
    from twin.latency import load_latency_model
    from twin.outputs.metrics import records_frame, summarize
    from twin.sim import EngineConfig, make_simulator

    workload = tiled(args.trace, args.requests).scale_rate(args.scale)
    # CPU time, not wall time: on a shared machine the wall clock charges other work to us.
    profile = None if args.no_profile else cProfile.Profile(time.process_time)
    wall, cpu = time.perf_counter(), time.process_time()
    if profile:
        profile.enable()
    model = load_latency_model(load_model_config("llama-3.1-8b"))
    sim = make_simulator(workload, policies.get(args.policy), model, Slo(), EngineConfig())
    result = sim.run()
    sim_cpu = time.process_time() - cpu
    summarize(records_frame(result.requests), Slo())
    if profile:
        profile.disable()
    out = {
        "policy": args.policy,
        "scale": args.scale,
        "requests": len(workload),
        "iterations": int(len(result.iterations["start_s"])),
        "events": getattr(sim, "events", None) or len(getattr(sim, "_iters", [])),
        "simulate_cpu_s": round(sim_cpu, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "wall_s": round(time.perf_counter() - wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "profiled": profile is not None,
        "latency_model": model.label,
    }
    if profile:
        for key in ("tottime", "cumulative"):
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats(key).print_stats(args.top)
            body = text.getvalue()
            print(body[body.find("   ncalls") :])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
