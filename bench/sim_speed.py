"""How fast the twin simulates: requests and iterations per second on a full public trace.

Runs the whole Azure LLM inference conversation trace (19,366 requests, about an hour) through
the vllm policy at 1x and 4x its request rate, with steady decode fast-forward on and off,
several times each, and saves the medians as JSON.

    python bench/sim_speed.py --trace ../shared/traces/azure2023_conv.csv

With ``--baseline REV`` it compares this tree with the commit REV side by side in one run: REV
is exported with ``git archive`` and this tree (its tracked and untracked, not ignored files)
copied into a temporary directory, and every measurement runs in a child process, alternating
between the two, so both see the same machine load and edits made meanwhile do not count. It
prints and saves each tree's median wall and CPU time and the ratios current/baseline per
configuration (on a loaded machine the CPU time is the steadier of the two).

    python bench/sim_speed.py --trace ../shared/traces/azure2023_conv.csv --baseline b643eb3

Without ``--baseline`` each rate also runs a naive simulator (bench/naive_sim.py: one loop turn
per forward pass, vLLM-style chunked prefill, the same latency model and KV limits, no
fast-forward) in the same process, and prints twin's speed relative to it.

``--job-requests N[,N...]`` measures whole ``twin simulate`` jobs instead (records, summary,
parquet and plots) on a synthetic day of chat traffic that keeps an H100 serving Llama-3.1-8B
busy (bench/sim_job.py: 20 requests/s, prompts ~1,000 and outputs ~250 tokens, lognormal),
each in a child process under ``--memory-cap-gb``: wall, CPU and peak RSS, or how it failed.
With ``--baseline REV`` each job also runs on REV's tree, beside this one's, in alternating
order, with the ratios current/baseline.

    python bench/sim_speed.py --job-requests 100000,1000000 --memory-cap-gb 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from out_path import writable_out  # noqa: E402  (beside this file)

ROOT = Path(__file__).resolve().parents[1]


def one_run(trace: str, scale: float, policy: str, fast_forward: bool) -> dict:
    """One simulation in this process, with whichever tree ``sys.path`` resolves."""
    import policies
    from policies import Slo
    from profiler import load_model_config
    from twin.latency import load_latency_model
    from twin.sim import EngineConfig, Simulator

    try:
        from twin.outputs.metrics import records_frame, summarize
    except ImportError:  # a tree from before twin/outputs existed
        from twin.metrics import records_frame, summarize

    workload = scaled_workload(trace, scale)
    start = time.perf_counter()
    cpu = time.process_time()
    # The tree's default latency model (measured tables here, the datasheet roofline before
    # them), built inside the timing: reading its tables is part of what a run costs.
    model = load_latency_model(load_model_config("llama-3.1-8b"))
    sim = Simulator(
        workload, policies.get(policy), model, Slo(), EngineConfig(fast_forward=fast_forward)
    )
    try:  # the outputs as ``twin simulate`` builds them, in trees with a token log
        from twin.outputs.metrics import keep_token_times, request_tokens

        kept = keep_token_times(None, len(workload))
        sim.keep_token_times = kept and not times_from_log()
    except ImportError:
        request_tokens = None
    result = sim.run()
    simulated = time.perf_counter() - start
    if request_tokens is None:
        summarize(records_frame(result.requests), Slo())
    else:
        tokens = request_tokens(result.requests, sim.tokens)
        summarize(records_frame(result.requests, tokens, token_times=kept), Slo(), tokens)
    total = time.perf_counter() - start
    return {
        "wall_s": total,
        "cpu_s": time.process_time() - cpu,
        "simulate_s": simulated,
        "requests": len(workload),
        "iterations": int(len(result.iterations["start_s"])),
        "events": getattr(sim, "events", None) or len(sim._iters),
        "simulated_serving_s": result.end_s,
        "latency_model": model.label,
    }


def scaled_workload(trace: str, scale: float):
    """The trace with its request rate multiplied by ``scale``."""
    import traces

    workload = traces.load(trace)
    return workload if scale == 1.0 else workload.scale_rate(scale)


def times_from_log() -> bool:
    """Whether the tree builds the records' token times from the token log (so the requests
    need not keep their own), as ``twin simulate`` then runs."""
    try:
        import twin.core.token_times  # noqa: F401
    except ImportError:
        return False
    return True


def naive_run(trace: str, scale: float, policy: str) -> dict:
    """The same workload through bench/naive_sim.py, in this process."""
    import policies
    from profiler import load_model_config
    from twin.latency import load_latency_model
    from twin.sim import EngineConfig

    sys.path.insert(0, str(ROOT / "bench"))
    import naive_sim

    if policy != "vllm":
        raise SystemExit(f"--policy {policy}: the naive simulator schedules like vllm only")
    params = policies.get(policy).params
    workload = scaled_workload(trace, scale)
    start = time.perf_counter()
    cpu = time.process_time()
    model = load_latency_model(load_model_config("llama-3.1-8b"))
    cfg = naive_sim.NaiveConfig(
        num_kv_blocks=EngineConfig().kv_blocks(model),
        block_size=EngineConfig().block_size,
        max_num_batched_tokens=params.max_num_batched_tokens,
        max_num_seqs=params.max_num_seqs,
    )
    result = naive_sim.simulate(
        workload.arrival_s, workload.prompt_tokens, workload.output_tokens, model, cfg
    )
    return {
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "requests": len(workload),
        "finished": len(result.e2e_s),
        "iterations": result.iterations,
        "preemptions": result.preemptions,
        "simulated_serving_s": result.end_s,
        "latency_model": model.label,
    }


def _isolate(tree: Path) -> None:
    """Import the project from ``tree`` only, whatever tree is installed in this environment."""
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in repr(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in repr(h)]
    sys.path[:] = [str(tree)] + [p for p in sys.path if p and "__editable__" not in p]
    sys.path_importer_cache.clear()


def child_run(tree: Path, trace: str, scale: float, policy: str, fast_forward: bool) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(tree),
        "--trace",
        trace,
        "--scales",
        str(scale),
        "--policy",
        policy,
    ]
    if not fast_forward:
        cmd.append("--no-fast-forward")
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export(rev: str, into: Path) -> str:
    """Write the tree of commit ``rev`` into ``into``; returns its full hash."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if full.returncode != 0:
        raise SystemExit(f"--baseline {rev}: not a commit of this repository")
    archive = into / "tree.tar"
    commit = full.stdout.strip()
    subprocess.run(["git", "archive", "-o", str(archive), commit], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return commit


def snapshot_name() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, check=False).returncode
    return (head or "unknown") + (" with uncommitted edits" if dirty else "")


def snapshot(into: Path) -> str:
    """Copy this working tree's files into ``into``; returns what it is (commit, + edits)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, check=False).returncode
    return head + (" with uncommitted edits" if dirty else "")


def side_by_side(args, modes: list[bool]) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="twin-baseline-") as tmp:
        base_hash = export(args.baseline, Path(tmp))
        current = snapshot(Path(tmp) / "current")
        trees = {"baseline": Path(tmp) / "tree", "current": Path(tmp) / "current"}
        for scale in (float(s) for s in args.scales.split(",")):
            for ff in modes:
                repeats = args.repeats if ff else args.stepping_repeats
                walls: dict[str, list[float]] = {"baseline": [], "current": []}
                cpus: dict[str, list[float]] = {"baseline": [], "current": []}
                first: dict[str, dict] = {}
                for i in range(repeats):
                    # Alternate which tree goes first so neither always runs after the other.
                    order = ("baseline", "current") if i % 2 == 0 else ("current", "baseline")
                    for name in order:
                        run = child_run(trees[name], args.trace, scale, args.policy, ff)
                        walls[name].append(run["wall_s"])
                        cpus[name].append(run["cpu_s"])
                        first.setdefault(name, run)
                same_run = first["baseline"]["iterations"] == first["current"]["iterations"]
                if not same_run and first["baseline"]["latency_model"] == first["current"].get(
                    "latency_model"
                ):
                    raise SystemExit(f"scale {scale:g}x: the two trees simulated different runs")
                if not same_run:
                    # A new default latency model changes the run itself: compare whole runs.
                    print(
                        f"scale {scale:g}x: the trees' default latency models differ, so their "
                        f"runs do ({first['baseline']['iterations']} vs "
                        f"{first['current']['iterations']} iterations); ratios are per whole run"
                    )
                med = {name: statistics.median(w) for name, w in walls.items()}
                cpu = {name: statistics.median(c) for name, c in cpus.items()}
                row = {
                    "rate_scale": scale,
                    "fast_forward": ff,
                    "requests": first["current"]["requests"],
                    "iterations": first["current"]["iterations"],
                    "baseline_iterations": first["baseline"]["iterations"],
                    "baseline_latency_model": first["baseline"].get("latency_model"),
                    "current_latency_model": first["current"].get("latency_model"),
                    "events": first["current"]["events"],
                    "baseline_walls_s": walls["baseline"],
                    "current_walls_s": walls["current"],
                    "baseline_wall_s": med["baseline"],
                    "current_wall_s": med["current"],
                    "current_over_baseline": med["current"] / med["baseline"],
                    "baseline_cpus_s": cpus["baseline"],
                    "current_cpus_s": cpus["current"],
                    "baseline_cpu_s": cpu["baseline"],
                    "current_cpu_s": cpu["current"],
                    "cpu_current_over_baseline": cpu["current"] / cpu["baseline"],
                }
                rows.append(row)
                print(
                    f"scale {scale:g}x fast_forward={ff}: baseline {med['baseline']:.2f} s, "
                    f"current {med['current']:.2f} s (median of {repeats}) -> "
                    f"current/baseline {row['current_over_baseline']:.3f} wall, "
                    f"{row['cpu_current_over_baseline']:.3f} CPU time"
                )
    return {"baseline": base_hash, "current": current, "runs": rows}


def add_naive(row: dict, twin_runs: list[dict], args, scale: float) -> None:
    """Naive runs interleaved with nothing else: medians, and twin's speed relative to them."""
    runs = [naive_run(args.trace, scale, args.policy) for _ in range(len(twin_runs))]
    wall = statistics.median(r["wall_s"] for r in runs)
    cpu = statistics.median(r["cpu_s"] for r in runs)
    twin_cpu = statistics.median(r["cpu_s"] for r in twin_runs)
    twin_sim = statistics.median(r["simulate_s"] for r in twin_runs)
    row["naive"] = {
        **runs[0],
        "wall_s": wall,
        "cpu_s": cpu,
        "walls_s": [r["wall_s"] for r in runs],
        "cpus_s": [r["cpu_s"] for r in runs],
    }
    row["cpu_s"] = twin_cpu
    row["naive_over_twin_wall"] = wall / row["wall_s"]
    row["naive_over_twin_cpu"] = cpu / twin_cpu
    row["naive_over_twin_loop_wall"] = wall / twin_sim
    print(
        f"scale {scale:g}x naive: {runs[0]['iterations']} iterations in {wall:.2f} s "
        f"({cpu:.2f} s CPU) -> twin is {row['naive_over_twin_wall']:.2f}x the naive simulator's "
        f"speed (wall), {row['naive_over_twin_cpu']:.2f}x (CPU), "
        f"{row['naive_over_twin_loop_wall']:.2f}x counting twin's event loop alone"
    )


def measure_here(args, modes: list[bool], naive: bool = True) -> dict:
    rows = []
    for scale in (float(s) for s in args.scales.split(",")):
        for ff in modes:
            n = args.repeats if ff else 1
            runs = [one_run(args.trace, scale, args.policy, ff) for _ in range(n)]
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
                f"scale {scale:g}x fast_forward={ff}: {row['requests']} requests, "
                f"{row['iterations']} iterations in {wall:.2f} s -> "
                f"{row['requests_per_s']:.0f} req/s, {row['iterations_per_s']:.0f} it/s"
            )
            if naive and ff:
                add_naive(row, runs, args, scale)
    for scale in sorted({r["rate_scale"] for r in rows}):
        pair = {r["fast_forward"]: r for r in rows if r["rate_scale"] == scale}
        if len(pair) == 2:
            print(
                f"scale {scale:g}x: fast-forward is "
                f"{pair[False]['wall_s'] / pair[True]['wall_s']:.1f}x "
                "faster than one event per iteration"
            )
    return {"runs": rows}


def main(argv: list[str] | None = None) -> None:
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
        "--stepping-repeats", type=int, default=1, help="repeats of those runs (with --baseline)"
    )
    parser.add_argument("--baseline", metavar="REV", help="compare with this commit, side by side")
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive simulator beside twin"
    )
    parser.add_argument(
        "--job-requests",
        metavar="N[,N...]",
        help="measure whole twin simulate jobs of N synthetic requests instead",
    )
    parser.add_argument("--job-rate", type=float, default=None, help="their request rate (/s)")
    parser.add_argument("--memory-cap-gb", type=float, default=12.0, help="per job")
    parser.add_argument("--job-timeout", type=float, default=1800.0, help="seconds per job")
    parser.add_argument("--no-plots", action="store_true", help="jobs without plots")
    parser.add_argument("--out", help="JSON to write (default under bench/results)")
    parser.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    parser.add_argument("--no-fast-forward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _isolate(Path(args.worker))
        run = one_run(args.trace, float(args.scales), args.policy, not args.no_fast_forward)
        print(json.dumps(run))
        return
    if args.repeats < 1 or args.stepping_repeats < 1:
        parser.error("--repeats and --stepping-repeats must be at least 1")
    trace = Path(args.trace)
    if trace.exists():
        args.trace = str(trace.resolve())  # the children run in other directories
    modes = [True] if args.no_stepping else [True, False]
    if args.job_requests:
        default = "sim_speed_jobs.json"
    else:
        default = "sim_speed_side_by_side.json" if args.baseline else "sim_speed.json"
    out = writable_out(args.out or ROOT / "bench" / "results" / default)
    commit = snapshot_name()  # before the runs: what they measured
    if args.job_requests:
        sys.path.insert(0, str(ROOT / "bench"))
        import sim_job

        sim_job.check_args(parser, args)
        if args.baseline:
            with tempfile.TemporaryDirectory(prefix="twin-baseline-") as tmp:
                base_hash = export(args.baseline, Path(tmp))
                result = {"baseline": base_hash, **sim_job.measure_jobs(args, Path(tmp) / "tree")}
        else:
            result = sim_job.measure_jobs(args)
    elif args.baseline:
        result = side_by_side(args, modes)
    else:
        result = measure_here(args, modes, naive=not args.no_naive)
    meta = {
        "date": date.today().isoformat(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "trace": "synthetic (see jobs)" if args.job_requests else Path(args.trace).name,
        "policy": args.policy,
        "commit": commit,
        "latency_model": "each tree's default for llama-3.1-8b on H100 (see runs' latency_model)",
    }
    out.write_text(json.dumps({"meta": meta, **result}, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
