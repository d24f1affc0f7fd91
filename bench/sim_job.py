"""One whole ``twin simulate`` job in a child process under a memory cap: wall, CPU, peak RSS.

The job is what a user runs: load the workload, simulate, write records (parquet), the
summary and the plots. The child gets an address-space limit (``resource.setrlimit``), so a
run that would outgrow the machine fails with a MemoryError instead of swapping it, and a
wall-clock limit after which it is killed. CPU seconds and peak RSS come from ``os.wait4``.
The cap counts address space, not resident memory: the interpreter and its libraries reserve
a few hundred MB they never touch, so a job fails a little before its RSS reaches the cap.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child_process import run_child  # noqa: E402  (beside this file)

# A day-scale job for an H100 serving Llama-3.1-8B with chat-like lengths (mean prompt 1,000
# tokens, mean output 250, both lognormal): vllm's default limits serve about 22 requests/s
# of this mix on the measured tables, so 20/s keeps the GPU busy without a queue that grows
# without bound. One million requests are about 14 hours of serving.
JOB_RATE = 20.0
JOB_LENGTHS = "prompt=lognormal(1000,0.8),output=lognormal(250,0.8)"


ROOT = Path(__file__).resolve().parents[1]
# How a child that hit the cap says so: Python, numpy, pyarrow, C++ and the C library.
OUT_OF_MEMORY = ("MemoryError", "Unable to allocate", "std::bad_alloc", "Cannot allocate memory")


# Imports the project from one tree only, whatever tree is installed in this environment:
# sim_speed's workers' own isolation, run first in the job's process.
ISOLATE = (
    "import sys; from pathlib import Path; sys.path.insert(0, {bench!r}); "
    "from sim_speed import _isolate; _isolate(Path({tree!r})); "
)


def job_trace(requests: int, rate: float = JOB_RATE) -> str:
    return f"synthetic:n={requests},rate={rate:g},{JOB_LENGTHS},seed=0"


def _limit_memory(cap_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    return apply


def run_job(
    trace: str,
    policy: str = "vllm",
    memory_cap_gb: float = 12.0,
    timeout_s: float = 1800.0,
    plots: bool = True,
    tree: Path | None = None,
) -> dict:
    """``twin simulate`` of ``trace`` into a temporary directory; what it cost and how it ended.

    ``tree``: a source tree (another commit's) whose project the job imports instead of the
    one installed here."""
    if not (memory_cap_gb > 0 and memory_cap_gb != float("inf")):
        raise ValueError(f"memory cap {memory_cap_gb!r} GB: give a positive, finite size")
    cap = int(memory_cap_gb * 2**30)
    with tempfile.TemporaryDirectory(prefix="twin-job-") as tmp:
        out_dir = Path(tmp) / "run"
        code = "import sys; from twin.commands.cli import main; main(sys.argv[1:])"
        if tree is not None:
            code = ISOLATE.format(bench=str(Path(__file__).resolve().parent), tree=str(tree)) + code
        cmd = [
            sys.executable,
            "-c",
            code,
            "simulate",
            "--trace",
            trace,
            "--policy",
            policy,
            "--out",
            str(out_dir),
            "--quiet",
            "--plots" if plots else "--no-plots",
        ]
        log = Path(tmp) / "job.log"
        child = run_child(cmd, log, timeout_s, preexec_fn=_limit_memory(cap), poll_s=0.05)
        code, timed_out = child["returncode"], child["timed_out"]
        text = log.read_text(errors="replace").replace(tmp, "TMP").replace(str(ROOT), ".")
        for prefix in {sys.prefix, sys.base_prefix}:
            text = text.replace(prefix, "PYTHON")
        files = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
        size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()) if files else 0
        summary_path = out_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if timed_out:
        outcome = f"killed after {timeout_s:g} s"
    elif code == 0:
        outcome = "finished"
    elif any(m in text for m in OUT_OF_MEMORY):
        outcome = f"out of memory at the {memory_cap_gb:g} GB cap"
    else:
        outcome = f"failed (exit {code})"
    return {
        "trace": trace,
        "policy": policy,
        "plots": plots,
        "memory_cap_gb": memory_cap_gb,
        "memory_cap_kind": "address space (RLIMIT_AS)",
        "outcome": outcome,
        "ok": code == 0 and not timed_out,
        "wall_s": child["process_wall_s"],
        "cpu_s": child["cpu_s"],
        "peak_rss_mb": child["peak_rss_mb"],
        "files": files,
        "latency_model": summary.get("latency_model"),
        "simulated_serving_s": summary.get("simulated_s"),
        "simulator_wall_s": summary.get("wall_s"),
        "finished": summary.get("finished"),
        "output_mb": size / 2**20,
        "log_tail": "" if code == 0 else "\n".join(text.splitlines()[-8:]),
    }


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        sizes = [int(v) for v in args.job_requests.split(",")]
    except ValueError:
        parser.error(f"--job-requests {args.job_requests}: give whole numbers, e.g. 100000,1000000")
    if not sizes or min(sizes) < 1:
        parser.error(f"--job-requests {args.job_requests}: each size must be at least 1")
    if args.job_rate is None:
        args.job_rate = JOB_RATE
    for flag, value in (
        ("--job-rate", args.job_rate),
        ("--memory-cap-gb", args.memory_cap_gb),
        ("--job-timeout", args.job_timeout),
    ):
        if not (value > 0 and math.isfinite(value)):
            parser.error(f"{flag} {value}: give a positive, finite number")


def measure_jobs(args: argparse.Namespace, baseline: Path | None = None) -> dict:
    """Each size of ``--job-requests`` once, in turn (never two at a time); with a
    ``baseline`` tree, that tree's job beside this one's for each size, in alternating order,
    and the ratios current/baseline."""
    jobs = []
    for i, n in enumerate(int(v) for v in args.job_requests.split(",")):
        trace = job_trace(n, args.job_rate)
        print(f"job {trace} under a {args.memory_cap_gb:g} GB cap ...", flush=True)
        trees = {"current": None} if baseline is None else {"baseline": baseline, "current": None}
        order = list(trees) if i % 2 == 0 else list(reversed(trees))
        runs = {}
        for name in order:
            job = run_job(
                trace, args.policy, args.memory_cap_gb, args.job_timeout, not args.no_plots,
                trees[name],
            )  # fmt: skip
            job["requests"] = n
            job["requests_per_s"] = n / job["wall_s"] if job["ok"] else None
            runs[name] = job
            label = "" if baseline is None else f" ({name})"
            print(
                f"job {n} requests{label}: {job['outcome']}: wall {job['wall_s']:.1f} s, CPU "
                f"{job['cpu_s']:.1f} s, peak RSS {job['peak_rss_mb']:.0f} MB"
                + (f", {len(job['files'])} files" if job["ok"] else f"\n{job['log_tail']}"),
                flush=True,
            )
        job = runs["current"]
        if baseline is not None:
            base = job["baseline"] = runs["baseline"]
            if job["ok"] and base["ok"]:
                for key in ("wall_s", "cpu_s", "peak_rss_mb"):
                    job[f"{key}_current_over_baseline"] = job[key] / base[key]
                print(
                    f"job {n} requests: current/baseline {job['cpu_s_current_over_baseline']:.3f}"
                    f" CPU, {job['wall_s_current_over_baseline']:.3f} wall, "
                    f"{job['peak_rss_mb_current_over_baseline']:.3f} peak RSS",
                    flush=True,
                )
        jobs.append(job)
    return {"jobs": jobs}
