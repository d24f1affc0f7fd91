"""What a run's outputs cost: time and memory of records, summary, parquet and plots.

Simulates one workload with the default latency model (measured H100 tables, llama-3.1-8b)
and the vllm policy, then builds the records and summary, writes records.parquet and
iterations.parquet and draws the two plots, timing each phase in CPU seconds and reading the
resident memory after the simulation and its peak during the outputs (the kernel's peak is
reset in between, /proc/self/clear_refs) and over the whole run.

    python bench/output_cost.py --trace synthetic:n=100000,rate=20,prompt=...,output=...

With ``--baseline REV`` the same runs in a child process on the commit REV too (exported
with ``git archive``, as ``bench/sim_speed.py`` does), side by side, and the ratios
current/baseline are printed; ``--repeats N`` builds the records and summary N times in each
child and reports the fastest, as the noise of a shared machine asks. Every child runs under
an address-space limit (``--limit-gb``) so that an old tree that cannot hold the run fails
alone instead of exhausting the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from sim_speed import export, snapshot, times_from_log  # noqa: E402


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(
    trace: str, policy: str, asked: bool | None, rate_scale: float = 1.0, repeats: int = 1
) -> dict:
    """One run in this process, with whichever tree ``sys.path`` resolves first."""
    import pandas as pd

    import policies
    from policies import Slo
    from profiler import load_model_config
    from twin.experiment import SimConfig, load_workload
    from twin.latency import load_latency_model
    from twin.outputs import metrics, plots
    from twin.outputs.writer import write_outputs
    from twin.sim import EngineConfig, make_simulator

    columnar = hasattr(metrics, "request_tokens")
    slo = Slo()
    wl = load_workload(SimConfig(trace=trace, rate_scale=rate_scale))
    token_times = metrics.keep_token_times(asked, len(wl)) if columnar else True
    model = load_latency_model(load_model_config("llama-3.1-8b"))
    sim = make_simulator(wl, policies.get(policy), model, slo, EngineConfig())
    if columnar:  # as ``twin simulate``: from the token log, when the tree builds them so
        sim.keep_token_times = token_times and not times_from_log()
    cpu = time.process_time()
    result = sim.run()
    sim_cpu = time.process_time() - cpu
    rss_after_sim = _status_mb("VmRSS")
    peak_sim = _status_mb("VmHWM")
    reset = _reset_peak()
    phases = {}
    built = []  # CPU of each build of the records and summary (the fastest is reported)
    for _ in range(repeats):
        records = summary = extra = tokens = None  # the last build's freed before the next
        cpu = time.process_time()
        if columnar:
            tokens = metrics.request_tokens(result.requests, sim.tokens, slo.tbt_statistic)
            records = metrics.records_frame(result.requests, tokens, token_times=token_times)
            summary = metrics.summarize(records, slo, tokens)
            extra = {"tokens": tokens}
        else:
            records = metrics.records_frame(result.requests)
            summary = metrics.summarize(records, slo)
            extra = {}
        built.append(time.process_time() - cpu)
    phases["records_summary_cpu_s"] = min(built)
    summary["latency_model"] = model.label
    config = {"slo": dataclasses.asdict(slo)}
    iterations, timeline = pd.DataFrame(result.iterations), pd.DataFrame(result.timeline)
    title = f"{policy} on {trace}"
    with tempfile.TemporaryDirectory(prefix="twin-outputs-") as out:
        cpu = time.process_time()
        write_outputs(
            Path(out), records, iterations, timeline, summary, config, title,
            model.gpu.num_sms, False,
        )  # fmt: skip
        phases["parquet_cpu_s"] = time.process_time() - cpu
        cpu = time.process_time()
        label = model.label
        if columnar:
            plots.latency_cdfs(records, slo, title, Path(out) / "a.png", label, extra["tokens"])
            plots.run_timeline(
                extra["tokens"], timeline, title, Path(out) / "b.png", model.gpu.num_sms, label
            )
        else:
            plots.latency_cdfs(records, slo, title, Path(out) / "a.png", label)
            plots.run_timeline(
                records, timeline, title, Path(out) / "b.png", model.gpu.num_sms, label
            )
        phases["plots_cpu_s"] = time.process_time() - cpu
        records_mb = (Path(out) / "records.parquet").stat().st_size / 2**20
    return {
        "tree": "columnar" if columnar else "objects",
        "requests": len(wl),
        "iterations": int(len(result.iterations["start_s"])),
        "token_times": token_times if columnar else True,
        "simulate_cpu_s": round(sim_cpu, 2),
        **{k: round(v, 2) for k, v in phases.items()},
        "outputs_cpu_s": round(sum(phases.values()), 2),
        "rss_after_sim_mb": round(rss_after_sim),
        "peak_during_sim_mb": round(peak_sim),
        "peak_during_outputs_mb": round(_status_mb("VmHWM")) if reset else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "records_parquet_mb": round(records_mb, 1),
        "tbt_p99_s": summary["tbt_p99_s"],
        "latency_model": model.label,
    }


def child(tree: Path, args, token_times: bool | None) -> dict:
    cmd = [
        sys.executable, str(BENCH / "output_cost.py"), "--worker", str(tree),
        "--trace", args.trace, "--policy", args.policy, "--limit-gb", str(args.limit_gb),
        "--rate-scale", str(args.rate_scale), "--repeats", str(args.repeats),
    ]  # fmt: skip
    if token_times is not None:
        cmd.append("--token-times" if token_times else "--no-token-times")
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": f"exit {done.returncode}: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--policy", default="vllm")
    ap.add_argument("--rate-scale", type=float, default=1.0, help="multiply the trace's rate")
    ap.add_argument(
        "--repeats", type=int, default=1, help="build the records and summary N times (fastest)"
    )
    ap.add_argument("--baseline", help="a commit to measure side by side")
    ap.add_argument(
        "--token-times",
        action=argparse.BooleanOptionalAction,
        help="columnar tree: keep every token's time (default: as `twin simulate` does)",
    )
    ap.add_argument("--limit-gb", type=float, default=10.0, help="address-space limit per run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not (0 < args.rate_scale < float("inf")):
        raise SystemExit(f"--rate-scale {args.rate_scale}: give a positive, finite factor")
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: give 1 or more")
    if not (0 < args.limit_gb < 1024):
        raise SystemExit(f"--limit-gb {args.limit_gb}: give a size in GB between 0 and 1024")
    if args.worker:
        limit = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        sys.path.insert(0, args.worker)
        report = worker(args.trace, args.policy, args.token_times, args.rate_scale, args.repeats)
        print(json.dumps(report))
        return 0
    keep = args.token_times
    with tempfile.TemporaryDirectory(prefix="twin-outputs-") as tmp:
        current = Path(tmp) / "current"
        what = snapshot(current)
        rows = {"current": child(current, args, keep)}
        if args.baseline:
            base = export(args.baseline, Path(tmp))
            rows["baseline"] = child(Path(tmp) / "tree", args, None)
            what += f" against {base}"
    report = {"trace": args.trace, "rate_scale": args.rate_scale, "policy": args.policy}
    report.update({"trees": what, **rows})
    cur, base = rows["current"], rows.get("baseline", {})
    if base and "failed" not in base and "failed" not in cur:
        report["ratios_current_over_baseline"] = {
            k: round(cur[k] / base[k], 3)
            for k in (
                "simulate_cpu_s", "records_summary_cpu_s", "outputs_cpu_s",
                "rss_after_sim_mb", "peak_during_outputs_mb", "peak_rss_mb",
            )  # fmt: skip
            if cur.get(k) and base.get(k)
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
