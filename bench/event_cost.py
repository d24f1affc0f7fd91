"""What one simulator event costs, split into a fixed part and a part per request in its batch.

Every run the simulator completes is one event: the run's tokens and finishes are applied and
the policy decides the next batch, which is planned and launched. This times each event's CPU
(``time.process_time`` around ``Simulator._complete``) and fits

    CPU per event = fixed + per_request * (requests in the finished run's batch)

by least squares, so a report can say how much of a simulation's loop scales with the number
of running requests (the passes over them: KV checks, advancing, logging) and how much does
not. Two set-ups:

* ``--setup vs-vidur``: bench/vs_vidur.py's (Llama-2-7B on the datasheet roofline, vllm with
  4,096 tokens and 128 sequences a step, 6,499 KV blocks, requests cut to 4,096 tokens as
  Vidur cuts them) on a CSV trace at ``--scale``;
* ``--setup job``: bench/sim_job.py's day-scale synthetic job (Llama-3.1-8B on the measured
  H100 tables, vllm's defaults) with ``--requests`` requests.

    python bench/event_cost.py --setup vs-vidur --trace azure2023_conv.csv --scale 2
    python bench/event_cost.py --setup job --requests 50000

The timer adds about a microsecond to each event; the fit is for finding where time goes,
not a speed claim (bench/sim_speed.py and bench/vs_vidur.py measure those side by side).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from out_path import writable_out  # noqa: E402  (beside this file)

BANDS = ((0, 10), (10, 30), (30, 60), (60, 100), (100, 200), (200, 1 << 30))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=("vs-vidur", "job"), default="vs-vidur")
    parser.add_argument("--trace", default=None, help="CSV trace (vs-vidur set-up)")
    parser.add_argument("--scale", type=float, default=1.0, help="request-rate multiplier")
    parser.add_argument("--requests", type=int, default=50_000, help="job set-up's requests")
    parser.add_argument("--out", default=None, help="JSON to write (default: print only)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.scale) and args.scale > 0):
        parser.error(f"--scale {args.scale!r}: give a positive, finite rate multiplier")
    if args.setup == "vs-vidur":
        if args.trace is None:
            parser.error("--setup vs-vidur needs --trace, a CSV trace such as azure2023_conv.csv")
        if not Path(args.trace).is_file():
            parser.error(f"--trace {args.trace}: not a file; give a CSV trace's path")
    elif args.requests < 2:
        parser.error(f"--requests {args.requests}: give at least 2 requests")
    if args.out is not None:
        args.out = writable_out(args.out)  # checked before the run, not at its end
    return args


def _vs_vidur_simulator(trace: str, scale: float):
    from vs_vidur import MODEL_JSON, clip_to_context

    import policies
    import traces
    from policies import Slo
    from profiler import DatasheetModel, load_model_config
    from twin.sim import EngineConfig, Simulator

    try:
        workload = traces.load(trace)
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"--trace {trace}: cannot be read as a trace ({err})") from None
    workload = workload.scale_rate(scale) if scale != 1.0 else workload
    prompt, output, _ = clip_to_context(workload.prompt_tokens, workload.output_tokens)
    workload = traces.Workload(workload.arrival_s, prompt, output, name="trace")
    model = DatasheetModel(load_model_config(MODEL_JSON))
    policy = policies.get("vllm", max_num_batched_tokens=4096, max_num_seqs=128)
    sim = Simulator(workload, policy, model, Slo(), EngineConfig(num_kv_blocks=6499))
    sim.keep_token_times = False
    return sim, model.label


def _job_simulator(requests: int):
    from sim_job import job_trace

    import policies
    import traces
    from policies import Slo
    from profiler import load_model_config
    from twin.latency import load_latency_model
    from twin.sim import EngineConfig, make_simulator

    workload = traces.load(job_trace(requests))
    model = load_latency_model(load_model_config("llama-3.1-8b"), "h100", None, "vllm", "measured")
    sim = make_simulator(workload, policies.get("vllm"), model, Slo(), EngineConfig())
    sim.keep_token_times = False
    return sim, model.label


def measure(sim) -> dict:
    """Run ``sim`` with every event timed; the fit and the events' CPU by batch size."""
    from twin.sim.simulator import Simulator

    sizes: list[int] = []
    cpu: list[float] = []
    complete = Simulator._complete
    clock = time.process_time

    def timed(self, run) -> None:
        t = clock()
        complete(self, run)
        cpu.append(clock() - t)
        sizes.append(len(run.batch.decode) + len(run.batch.prefill))

    Simulator._complete = timed
    start = clock()
    try:
        sim.run()
    finally:
        Simulator._complete = complete
    loop = clock() - start
    r = np.asarray(sizes, dtype=np.float64)
    t = np.asarray(cpu) * 1e6
    a = np.vstack([np.ones_like(r), r]).T
    (fixed, per_request), *_ = np.linalg.lstsq(a, t, rcond=None)
    bands = []
    for lo, hi in BANDS:
        m = (r >= lo) & (r < hi)
        if m.any():
            bands.append({"requests": [lo, hi], "events": int(m.sum()),
                          "median_us": float(np.median(t[m]))})  # fmt: skip
    scaling = per_request * r.mean() / t.mean() if t.size else float("nan")
    return {
        "requests": len(sim.requests),
        "events": int(t.size),
        "events_per_request": t.size / max(len(sim.requests), 1),
        "loop_cpu_s": loop,
        "events_cpu_s": float(t.sum() / 1e6),
        "mean_batch_requests": float(r.mean()),
        "mean_event_us": float(t.mean()),
        "fit_fixed_us": float(fixed),
        "fit_per_request_us": float(per_request),
        "share_scaling_with_requests": float(scaling),
        "by_batch_size": bands,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.setup == "vs-vidur":
        sim, label = _vs_vidur_simulator(args.trace, args.scale)
        case = f"{Path(args.trace).name} at {args.scale:g}x"
    else:
        sim, label = _job_simulator(args.requests)
        case = f"synthetic job, {args.requests} requests"
    result = measure(sim)
    print(f"{case} ({label}): {result['events']} events for {result['requests']} requests, "
          f"{result['mean_event_us']:.1f} us CPU each on average over "
          f"{result['mean_batch_requests']:.1f} requests a batch")  # fmt: skip
    share = result["share_scaling_with_requests"]
    print(f"fit: {result['fit_fixed_us']:.1f} us + {result['fit_per_request_us']:.3f} us per "
          f"request; {share:.0%} of event CPU scales with them")  # fmt: skip
    for band in result["by_batch_size"]:
        lo, hi = band["requests"]
        print(f"  {lo}-{hi if hi < 1 << 30 else ''} requests: {band['events']} events, "
              f"median {band['median_us']:.1f} us")  # fmt: skip
    if args.out:
        record = {
            "date": dt.date.today().isoformat(),
            "python": platform.python_version(),
            "setup": args.setup,
            "case": case,
            "latency_model": label,
            **result,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
