"""What the metrics step costs after a simulation: token statistics, records and summary.

Simulates the Azure conversation trace once per rate multiplier with this tree, in the setup
of ``bench/vs_vidur.py`` (Llama-2-7B, datasheet latency model, i.e. no measured tables; vllm
with 4096 batched tokens and 128 sequences; 6,499 KV blocks), and keeps each run's requests
and token log. Then the metrics step ``twin simulate`` and vs_vidur's twin child run after the
loop (``request_tokens`` -> ``records_frame`` with token times -> ``summarize``) is timed in
CPU seconds on those same logs for this tree and for the commit ``--baseline``, in child
processes that alternate between the two trees (``--rounds``), each keeping the fastest of
``--repeats`` steps. It prints the minima per tree and the ratios current/baseline, checks
that both trees' outputs (every token statistic, the records frame and the summary) hash the
same, and saves the result as JSON.

    python bench/metrics_cost.py --trace azure2023_conv.csv --scales 2,4 --baseline f89c040
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from out_path import writable_out  # noqa: E402  (beside this file)
from sim_speed import _isolate, export, snapshot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("token_stats", "records", "summary", "total")
STAT_FIELDS = (
    "tokens first_s last_s tbt_mean_s tbt_max_s gap_values gap_counts time_values time_counts"
).split()


def simulate(trace: str, scale: float, into: Path) -> dict:
    """One run of the vs_vidur setup at ``scale`` times the trace's rate; its requests and
    token log pickled into ``into``."""
    import policies
    import traces
    from policies import Slo
    from profiler import DatasheetModel, load_model_config
    from twin.sim import EngineConfig, Simulator

    wl = traces.load(trace)
    wl = traces.Workload(wl.arrival_s / scale, wl.prompt_tokens, wl.output_tokens, name="x")
    model = DatasheetModel(load_model_config(ROOT / "profiler" / "configs" / "llama-2-7b.json"))
    policy = policies.get("vllm", max_num_batched_tokens=4096, max_num_seqs=128)
    sim = Simulator(wl, policy, model, Slo(), EngineConfig(num_kv_blocks=6499))
    sim.keep_token_times = False  # as vs_vidur's child: the records' times from the log
    requests = sim.run().requests
    log = sim.tokens
    with open(into, "wb") as fh:
        pickle.dump((list(requests), log.ids, log.id_end, log.times, log.time_end), fh)
    return {
        "requests": len(requests),
        "log_entries": len(log),
        "pairs": len(log.ids),
        "times": len(log.times),
        "latency_model": model.label,
    }


def _digest(stats, records, summary) -> str:
    """A hash of every output of the step, bit for bit."""
    h = hashlib.sha256()
    for name in STAT_FIELDS:
        value = getattr(stats, name)
        h.update(f"{name}:{value.dtype}:{value.shape}".encode())
        h.update(value.tobytes())
    for name, value in sorted(stats.tbt_percentile_s.items()):
        h.update(name.encode() + value.tobytes())
    for column in records.columns:
        values = records[column]
        h.update(f"{column}:{values.dtype}".encode())
        if column == "token_times_s":
            for times in values:
                h.update(f"{times.dtype}:{times.size}".encode() + times.tobytes())
        else:
            h.update(pickle.dumps(values.to_list()))
    h.update(json.dumps({k: repr(v) for k, v in summary.items()}, sort_keys=True).encode())
    return h.hexdigest()


def worker(tree: str, logs: list[str], repeats: int, statistic: str) -> dict:
    """The metrics step on each pickled log with ``tree``'s code, fastest of ``repeats``."""
    _isolate(Path(tree))
    from policies import Slo
    from twin.core.tokens import TokenLog
    from twin.outputs.metrics import records_frame, request_tokens, summarize

    slo = Slo(tbt_statistic=statistic)
    out = {}
    for path in logs:
        with open(path, "rb") as fh:
            requests, ids, id_end, times, time_end = pickle.load(fh)
        log = TokenLog()
        log.ids, log.id_end, log.times, log.time_end = ids, id_end, times, time_end
        best = [math.inf] * len(PHASES)
        digest = None
        for _ in range(repeats):
            c0 = time.process_time()
            stats = request_tokens(requests, log, statistic)
            c1 = time.process_time()
            records = records_frame(requests, stats, token_times=True)
            c2 = time.process_time()
            summary = summarize(records, slo, stats)
            c3 = time.process_time()
            spent = (c1 - c0, c2 - c1, c3 - c2, c3 - c0)
            best = [min(b, s) for b, s in zip(best, spent, strict=True)]
            digest = digest or _digest(stats, records, summary)
        out[path] = {"cpu_s": dict(zip(PHASES, best, strict=True)), "digest": digest}
    return out


def child(tree: Path, logs: list[Path], repeats: int, statistic: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree)]
    cmd += ["--logs", ",".join(map(str, logs)), "--repeats", str(repeats)]
    cmd += ["--statistic", statistic]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the metrics step in {tree} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scales_of(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",")]
    except ValueError:
        scales = []
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
        raise SystemExit(f"--scale {text!r}: give positive rate multipliers, e.g. 2,4")
    return scales


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", help="the Azure conversation trace (azure2023_conv.csv)")
    parser.add_argument("--scales", "--scale", default="2,4", help="request-rate multipliers")
    parser.add_argument("--baseline", metavar="REV", help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="children per tree, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="steps per child (min kept)")
    parser.add_argument("--statistic", default="mean", help="the SLO's TBT statistic")
    parser.add_argument("--out", help="JSON to write (default under bench/results)")
    parser.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    parser.add_argument("--logs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.logs.split(","), args.repeats, args.statistic)))
        return
    if not args.trace or not Path(args.trace).is_file():
        raise SystemExit(f"--trace {args.trace}: no such file; give the path of azure2023_conv.csv")
    if not args.baseline:
        raise SystemExit("--baseline REV: give the commit to compare this tree with")
    if args.rounds < 1 or args.repeats < 1:
        raise SystemExit("--rounds and --repeats: give 1 or more")
    scales = scales_of(args.scales)
    out_path = writable_out(args.out or ROOT / "bench" / "results" / "metrics_cost.json")
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="twin-metrics-") as tmp:
        base_hash = export(args.baseline, Path(tmp))
        current = snapshot(Path(tmp) / "current")
        trees = {"baseline": Path(tmp) / "tree", "current": Path(tmp) / "current"}
        logs, runs = [], []
        for scale in scales:
            logs.append(Path(tmp) / f"log_{scale:g}x.pkl")
            runs.append({"scale": scale, **simulate(args.trace, scale, logs[-1])})
        best: dict[str, dict[str, dict]] = {name: {} for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                for path, got in child(tree, logs, args.repeats, args.statistic).items():
                    seen = best[name].setdefault(path, got)
                    if seen["digest"] != got["digest"]:
                        raise SystemExit(f"{name}: the step's outputs differ between runs")
                    for phase in PHASES:
                        seen["cpu_s"][phase] = min(seen["cpu_s"][phase], got["cpu_s"][phase])
    rows = []
    for run, path in zip(runs, map(str, logs), strict=True):
        base, cur = best["baseline"][path], best["current"][path]
        ratio = {p: cur["cpu_s"][p] / base["cpu_s"][p] for p in PHASES}
        same = base["digest"] == cur["digest"]
        rows.append(
            {
                **run,
                "baseline_cpu_s": base["cpu_s"],
                "current_cpu_s": cur["cpu_s"],
                "ratio": ratio,
                "outputs_identical": same,
            }
        )
        print(
            f"{run['scale']:g}x ({run['pairs']:,} pairs, {run['log_entries']:,} entries): "
            + ", ".join(
                f"{p} {base['cpu_s'][p]:.3f} -> {cur['cpu_s'][p]:.3f} s ({ratio[p]:.2f})"
                for p in PHASES
            )
            + f"; outputs identical: {same}"
        )
    result = {
        "benchmark": "metrics_cost",
        "date": date.today().isoformat(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "command": (  # the trace by its name: where it lies is this machine's business
            f"python bench/metrics_cost.py --trace {Path(args.trace).name} --scales "
            f"{args.scales} --baseline {args.baseline} --rounds {args.rounds} --repeats "
            f"{args.repeats} --statistic {args.statistic}"
        ),
        "trace": Path(args.trace).name,
        "setup": "vs_vidur: llama-2-7b datasheet model, vllm 4096 tokens / 128 seqs, 6499 KV "
        "blocks; metrics = request_tokens, records_frame (token times), summarize",
        "statistic": args.statistic,
        "baseline": base_hash,
        "current": current,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "cpu": "process CPU seconds, min over rounds x repeats",
        "runs": rows,
    }
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")
    if not all(row["outputs_identical"] for row in rows):
        raise SystemExit("the two trees' outputs differ")


if __name__ == "__main__":
    main()
