"""Instructions a simulation executes, this tree against a baseline commit: a noise-free A/B.

On a shared machine CPU time swings by 5-15 % between runs of the same tree, so a change
worth a few percent cannot be seen in it. The instructions a run executes barely move with
the load: each tree runs the same simulation as ``bench/sim_speed.py`` (the tree's default
latency model, records and summary included) under valgrind's callgrind, which counts every
instruction the process executes. A second run of each tree on the trace's first request
counts what importing and setting up cost, and is subtracted, so the ratio is of the
simulation itself. Runs are about 50 times slower under callgrind: a few thousand requests
take a minute or two (``--first``).

    python bench/instructions.py --trace PATH/TO/azure2023_conv.csv --scale 2 \\
        --first 4000 --baseline main

Needs valgrind on the PATH. With hash seeds fixed and the numeric libraries on one thread,
two runs of the same tree count within about 0.1 % of each other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_speed  # noqa: E402  (beside this file)
from out_path import writable_out  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def count(tree: Path, args: argparse.Namespace, first: int) -> int:
    """Instructions of one worker run of ``tree`` on the trace's first ``first`` requests."""
    cmd = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, str(Path(__file__).resolve()), "--worker", str(tree),
        "--trace", args.trace, "--scale", str(args.scale), "--policy", args.policy,
        "--first", str(first),
    ]  # fmt: skip
    # One thread each for the numeric libraries: idle pool threads spin for a varying while,
    # and callgrind counts their instructions too (10-15 % between runs of the same tree).
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {**os.environ, "PYTHONHASHSEED": "0", **threads}
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=False, env=env)
    found = COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = done.stderr.strip().splitlines()[-3:]
        raise SystemExit(f"the run in {tree} failed: {' / '.join(tail)}")
    return int(found.group(1))


def check_trace(trace: str) -> None:
    """Load the trace once here, so a bad one is one line before minutes of counting."""
    from traces import TraceError, load

    try:
        load(trace)
    except (TraceError, OSError, ValueError) as error:
        raise SystemExit(f"--trace {trace}: {error}") from None


def worker(args: argparse.Namespace) -> None:
    sim_speed._isolate(Path(args.worker))
    whole = sim_speed.scaled_workload
    sim_speed.scaled_workload = lambda trace, scale: whole(trace, scale).first(args.first)
    run = sim_speed.one_run(args.trace, args.scale, args.policy, True)
    print(json.dumps(run))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default="azure-conv", help="trace name or path")
    parser.add_argument("--scale", type=float, default=1.0, help="request-rate multiplier")
    parser.add_argument("--policy", default="vllm")
    parser.add_argument("--first", type=int, default=4000, help="requests of the trace to run")
    parser.add_argument("--baseline", metavar="REV", required=False, help="commit to compare")
    parser.add_argument("--out", help="JSON to write (default under bench/results)")
    parser.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if not args.baseline:
        parser.error("--baseline REV is required: the commit to count against")
    if args.first < 2:
        parser.error(f"--first {args.first}: at least 2 requests (the first one is subtracted)")
    if not (math.isfinite(args.scale) and args.scale > 0):
        parser.error(f"--scale {args.scale}: must be a positive number")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on the PATH: install it (e.g. apt install valgrind)")
    trace = Path(args.trace)
    if trace.exists():
        args.trace = str(trace.resolve())  # the workers run in other directories
    check_trace(args.trace)
    out = writable_out(args.out or ROOT / "bench" / "results" / "instructions.json")
    commit = sim_speed.snapshot_name()
    counts: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="twin-baseline-") as tmp:
        base_hash = sim_speed.export(args.baseline, Path(tmp))
        sim_speed.snapshot(Path(tmp) / "current")
        trees = {"baseline": Path(tmp) / "tree", "current": Path(tmp) / "current"}
        for name, tree in trees.items():
            setup = count(tree, args, 1)
            total = count(tree, args, args.first)
            counts[name] = {"setup": setup, "total": total, "simulation": total - setup}
            print(f"{name}: {total - setup:,} instructions simulating ({setup:,} setting up)")
    ratio = counts["current"]["simulation"] / counts["baseline"]["simulation"]
    print(f"current/baseline instructions: {ratio:.3f}")
    result = {
        "meta": {
            "date": date.today().isoformat(),
            "python": sys.version.split()[0],
            "trace": Path(args.trace).name,
            "scale": args.scale,
            "policy": args.policy,
            "first": args.first,
            "baseline": base_hash,
            "commit": commit,
            "latency_model": "each tree's default for llama-3.1-8b on H100",
        },
        "counts": counts,
        "current_over_baseline": ratio,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
