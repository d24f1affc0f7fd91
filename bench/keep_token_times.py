"""What keeping each request's own token times costs a simulation, side by side in one run.

The records' token times come from the token log, so a simulation needs no per-request
``Request.token_times``; servers stream from them, so the switch ``keep_token_times`` stays.
This runs the same workload with the switch on and off, alternately, ``--repeats`` times
each, and prints the CPU seconds of the simulation loop (``sim.run()``) and of the metrics
(token statistics, records with every token's time, summary), medians, and their ratios
off/on. Both runs must give the same records bit for bit; the script checks that.

The setup is bench/vs_vidur.py's: Llama-2-7B on the datasheet latency model (roofline from
the GPU datasheet; attention, GEMMs and overheads modelled), vllm with 4096 batched tokens
and 128 sequences, 6499 KV blocks.

    python bench/keep_token_times.py --trace azure2023_conv.csv --scales 1,4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_JSON = ROOT / "profiler" / "configs" / "llama-2-7b.json"


def one_run(workload, keep: bool) -> tuple[dict, object]:
    import policies
    from policies import Slo
    from profiler import DatasheetModel, load_model_config
    from twin.outputs.metrics import records_frame, request_tokens, summarize
    from twin.sim import EngineConfig, Simulator

    model = DatasheetModel(load_model_config(MODEL_JSON))
    policy = policies.get("vllm", max_num_batched_tokens=4096, max_num_seqs=128)
    sim = Simulator(workload, policy, model, Slo(), EngineConfig(num_kv_blocks=6499))
    sim.keep_token_times = keep
    cpu = time.process_time()
    result = sim.run()
    loop = time.process_time() - cpu
    cpu = time.process_time()
    tokens = request_tokens(result.requests, sim.tokens)
    records = records_frame(result.requests, tokens, token_times=True)
    summarize(records, Slo(), tokens)
    metrics = time.process_time() - cpu
    row = {"loop_cpu_s": loop, "metrics_cpu_s": metrics, "latency_model": model.label}
    return row, records


def measure(trace: str, scale: float, repeats: int) -> dict:
    import pandas as pd

    import traces

    workload = traces.load(trace)
    if scale != 1.0:
        workload = workload.scale_rate(scale)
    rows: dict[bool, list[dict]] = {True: [], False: []}
    frames = {}
    for _ in range(repeats):
        for keep in (True, False):
            row, frames[keep] = one_run(workload, keep)
            rows[keep].append(row)
    pd.testing.assert_frame_equal(frames[True], frames[False], check_exact=True)
    out: dict = {"scale": scale, "requests": len(workload), "records_equal": True}
    for key in ("loop_cpu_s", "metrics_cpu_s"):
        on, off = (statistics.median(r[key] for r in rows[keep]) for keep in (True, False))
        # Four significant digits, not decimals: a short run's milliseconds keep theirs.
        out[f"kept_{key}"], out[f"not_kept_{key}"] = float(f"{on:.4g}"), float(f"{off:.4g}")
        out[f"ratio_{key}_off_over_on"] = round(off / on, 3) if on > 0 else None
    out["latency_model"] = rows[True][0]["latency_model"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True, help="a trace twin can load (file or name)")
    ap.add_argument("--scales", default="1,4", help="rate multipliers, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        raise SystemExit(f"--scales {args.scales}: give numbers, e.g. 1,4") from None
    if not scales or not all(0 < s < float("inf") for s in scales):
        raise SystemExit(f"--scales {args.scales}: each must be positive and finite")
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: give 1 or more")
    sys.path.insert(0, str(ROOT))
    import traces

    try:
        traces.load(args.trace)
    except traces.TraceError as err:
        raise SystemExit(f"--trace: {err}") from None
    for scale in scales:
        print(json.dumps(measure(args.trace, scale, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
