"""One GPU run that measures everything the twin assumes, each step saved as it finishes.

On one CUDA GPU, in one process, in this order, each step within its own time budget:
device metadata; copy bandwidth and bf16 GEMM peak; the green-context partition pool (SM
counts read back, confinement checked); the quick SM sweep across splits; co-runs of a
prefill and a decode iteration on complementary partitions against each alone; the
mixed-batch sweep (a prefill chunk plus N decodes against each part alone); the profile's
fit and plots (fitted here, before the replay, so the replay's policies and the validation
use the measured profile); bench/runtime.py's decode share of the HBM roofline and prefill
share of the GEMM peak; the partition switch cost; a short ``twin run --trace`` replay with
each policy and ``twin validate`` on it. Then ``summary.json`` and a table of the figures.

A step that fails or runs out of time is recorded and the campaign goes on; every step
writes into ``--out`` when it ends, and ``--pack`` re-packs the directory after each step,
so a run cut off anywhere leaves everything measured so far. ``--dry-run`` runs the same
steps on a CPU with a tiny model (the partition steps report skipped; times mean nothing).

    python bench/gpu_campaign.py --out runs/campaign --pack runs/campaign.tar.gz
    python bench/gpu_campaign.py --dry-run --out runs/campaign-dry
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import tarfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the step modules beside it, the repository

import campaign_runtime as runtime_steps  # noqa: E402  (beside this file)
import campaign_steps as steps  # noqa: E402
from campaign_dry import TINY_MODEL, dry_grid, write_dry_trace  # noqa: E402
from campaign_report import figures, print_table  # noqa: E402

STEPS = {  # name: (step, default budget in seconds); the budgets sum to the default total
    "meta": (steps.step_meta, 10),
    "peaks": (steps.step_peaks, 15),
    "partitions": (steps.step_partitions, 25),
    "sweep": (steps.step_sweep, 100),
    "corun": (steps.step_corun, 30),
    "mixed": (steps.step_mixed, 30),
    "profile": (steps.step_profile, 35),
    "runtime": (runtime_steps.step_runtime, 50),
    "switch": (runtime_steps.step_switch, 15),
    "replay": (runtime_steps.step_replay, 90),
    "validate": (runtime_steps.step_validate, 20),
}
# Steps that later ones need, run whenever a later one is asked for: each costs seconds.
PREREQUISITES = ("meta", "peaks", "partitions")
GRACE_S = 10.0  # past its budget a step is interrupted, not merely asked to stop


class CampaignError(Exception):
    """Bad flags or an output directory that must not be overwritten (one line)."""


class StepTimeout(Exception):
    pass


class Terminated(BaseException):
    """SIGTERM (an outer ``timeout``): pack what there is and stop. Not an Exception, so no
    step's own error handling swallows it."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum}")


class Campaign:
    """Settings and the state one step leaves for the next (device, pool, samples)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from profiler.config import load_model_config

        self.args, self.dry_run, self.out = args, args.dry_run, args.out.resolve()
        self.cuda = torch.cuda.is_available() and not args.dry_run
        self.device = torch.device("cuda", 0) if self.cuda else torch.device("cpu")
        if self.dry_run:
            model_dir = self.out / "model"
            model_dir.mkdir(parents=True, exist_ok=True)
            (model_dir / "config.json").write_text(json.dumps(TINY_MODEL, indent=2) + "\n")
            self.model_arg = str(model_dir)
            self.trace = args.trace or str(write_dry_trace(self.out / "trace.csv"))
        else:
            self.model_arg, self.trace = args.model, args.trace or "azure-conv"
        self.model_cfg = load_model_config(self.model_arg)
        self.policies = args.policies
        self.max_requests = args.max_requests or (6 if self.dry_run else 40)
        self.rate_scale = args.rate_scale or (1.0 if self.dry_run else 3.0)
        self.meta: dict[str, Any] = {}
        self.info: Any = None
        self.peaks: dict[str, Any] | None = None
        self.pool: Any = None
        self.kernels: Any = None
        self.clock: Any = None
        self._sweep: Any = None
        self._profile_meta: dict[str, Any] | None = None
        self.samples: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.started = time.time()
        self.profile_dir: Path | None = args.use_profile
        self.replays: list[str] = []

    # -- shared measurement state ------------------------------------------------------------

    def quick_grid(self) -> Any:
        """The grid across every split the partitions allow."""
        from profiler.grid import SweepGrid

        if self.dry_run:
            return dry_grid()
        return SweepGrid.quick(self.info.num_sms, max(self.info.min_sms, self.info.granularity))

    def sweep_grid(self) -> Any:
        """The grid this machine can run: the whole device alone without partitions."""
        grid = self.quick_grid()
        return grid if self.pool is not None else steps.whole_device_grid(grid, self.info.num_sms)

    def measurement(self) -> tuple[Any, Any]:
        """The kernels and clock every sweep shares, built on first use."""
        if self.kernels is None:
            from profiler.kernels import Kernels

            grid = self.sweep_grid()
            self.kernels = Kernels(self.model_cfg, self.device, grid.layers)
            if self.cuda:
                from profiler.sweep import CudaClock

                self.clock = CudaClock(
                    self.device,
                    self.info.l2_bytes,
                    grid.warmup,
                    grid.min_repeats,
                    grid.repeats,
                    grid.budget_s,
                )
            else:
                from profiler.host import HostClock

                self.clock = HostClock(repeats=grid.repeats)
        return self.kernels, self.clock

    def sweep(self) -> Any:
        if self._sweep is None:
            from profiler.host import WholeDevice
            from profiler.sweep import Sweep

            kernels, clock = self.measurement()
            pool = self.pool
            if pool is None:
                import torch

                stream = torch.cuda.Stream(self.device) if self.cuda else None
                pool = WholeDevice(self.info.num_sms, stream)
            self._sweep = Sweep(self.model_cfg, self.sweep_grid(), pool, kernels, clock)
        return self._sweep

    def release_measurement(self) -> None:
        """Free the sweep's tensors and partitions before the runtime takes the GPU."""
        self.kernels = self.clock = self._sweep = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.free_gpu()

    def free_gpu(self) -> None:
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def save_samples(self) -> Path:
        """Write the profile directory's meta.json and samples.parquet as they stand (nothing
        before the first sample)."""
        import pandas as pd

        from profiler.mixed_sweep import MixedGrid, with_mixed_columns
        from profiler.profile_io import write_meta, write_samples
        from profiler.sweep import profile_meta

        directory = self.out / "profile"
        if not self.samples:
            return directory
        directory.mkdir(parents=True, exist_ok=True)
        if self.kernels is not None or self._profile_meta is None:
            kernels, clock = self.measurement()
            partitions = self.pool.describe() if self.pool is not None else {"backend": "none"}
            self._profile_meta = profile_meta(
                self.info, self.model_cfg, self.sweep_grid(), kernels, clock, partitions,
                self.started, self.errors,
            )  # fmt: skip
        meta = dict(self._profile_meta)
        meta.update(
            driver=self.meta.get("driver") or meta["driver"],  # nvidia-smi's, e.g. 580.159.04
            driver_cuda_api=meta["driver"],  # the CUDA version the driver supports, e.g. 13.0
            dry_run=self.dry_run,
            measured_by="bench/gpu_campaign.py",
            mixed_grid=MixedGrid.quick().to_dict(),
        )
        write_meta(directory, meta)
        write_samples(directory, with_mixed_columns(pd.DataFrame(self.samples)))
        return directory

    def twin(self, argv: list[str]) -> None:
        """Run a ``twin`` command in this process; a non-zero exit is an error."""
        from twin.commands.cli import app

        try:
            code = app(argv, standalone_mode=False, prog_name="twin")
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:
            # Typer's (vendored) click raises these; matched by shape, not by import path.
            if hasattr(exc, "format_message"):  # a usage error
                raise RuntimeError(f"twin {argv[0]}: {exc.format_message()}") from None
            if not hasattr(exc, "exit_code"):
                raise
            code = exc.exit_code
        if code not in (None, 0):
            raise RuntimeError(f"twin {argv[0]} exited with status {code}")


@contextmanager
def time_limit(seconds: float):
    """Interrupt the block with StepTimeout after ``seconds`` (main thread, POSIX)."""

    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout(f"interrupted after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every step asked for, in order, within the overall budget; returns the summary."""
    c = Campaign(args)
    overall = time.monotonic() + args.total_s
    summary: dict[str, Any] = {"dry_run": c.dry_run, "steps": {}, "budget_s": args.total_s}
    summary["out"] = str(c.out.resolve())
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        for name in args.steps:
            if not run_step(c, name, args, overall, summary):
                break
    except Terminated as exc:  # between steps: the last one is saved, save the stop too
        summary["terminated"] = str(exc)
        finish(c, summary, args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return summary


def run_step(
    c: Campaign, name: str, args: argparse.Namespace, overall: float, summary: dict[str, Any]
) -> bool:
    """Run one step and save the summary; False when the campaign must stop (terminated)."""
    fn, default = STEPS[name]
    left = overall - time.monotonic()
    budget = min(args.budgets.get(name, default), left)
    record: dict[str, Any] = {"budget_s": round(budget, 1)}
    started = time.monotonic()
    if left <= 1:
        record.update(status="skipped", reason="the campaign's time is used up")
    else:
        try:
            with time_limit(budget + GRACE_S):
                record.update(status="ok", result=fn(c, started + budget))
        except steps.Skipped as exc:
            record.update(status="skipped", reason=str(exc))
        except StepTimeout as exc:
            record.update(status="timed out", reason=str(exc))
        except Exception as exc:  # a failing step must not lose the others
            record.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
            with (c.out / "errors.log").open("a") as log:
                log.write(f"[{name}]\n{traceback.format_exc()}\n")
        except Terminated as exc:
            record.update(status="terminated", reason=str(exc))
    record["seconds"] = round(time.monotonic() - started, 2)
    summary["steps"][name] = record
    print(f"[{name}] {record['status']} in {record['seconds']:.1f} s"
          + (f": {record['reason']}" if "reason" in record else ""), flush=True)  # fmt: skip
    finish(c, summary, args)
    return record["status"] != "terminated"


def finish(c: Campaign, summary: dict[str, Any], args: argparse.Namespace) -> None:
    summary["meta"] = c.meta
    try:
        summary["figures"] = figures(summary)
    except Exception as exc:  # the report must never stop the measuring
        summary["figures"] = []
        summary["report_error"] = f"{type(exc).__name__}: {exc}"
    summary["skipped_samples"] = c.errors[:50]
    steps.write_json(c.out / "summary.json", summary)
    if args.pack is not None:
        pack(c.out, args.pack)


def pack(directory: Path, target: Path) -> None:
    """``directory`` as one tar.gz, replaced whole so a cut-off run never leaves half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(directory, arcname=directory.name)
    partial.replace(target)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model: proves the code path")
    p.add_argument("--out", type=Path, default=Path("runs/gpu-campaign"))
    p.add_argument("--force", action="store_true", help="overwrite an earlier campaign in --out")
    p.add_argument("--pack", type=Path, default=None, help="tar.gz of --out after every step")
    p.add_argument("--steps", default=",".join(STEPS), help="comma list, in campaign order")
    p.add_argument("--total-s", type=float, default=420.0, help="budget of the whole run")
    p.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS")
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--trace", default=None, help="[azure-conv; dry run: six short requests]")
    p.add_argument("--policies", default="vllm,static-split,nexus,duetserve")
    p.add_argument("--max-requests", type=int, default=None, help="[40; dry run 6]")
    p.add_argument(
        "--use-profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile for the replay when this run fits none (a rerun without the sweeps)",
    )
    p.add_argument("--rate-scale", type=float, default=None, help="[3; dry run 1]")
    args = p.parse_args(argv)
    asked = [s for s in args.steps.split(",") if s]
    unknown = [s for s in asked if s not in STEPS]
    if unknown or not asked:
        known = ", ".join(STEPS)
        raise CampaignError(f"--steps: unknown {unknown or 'none given'}; known: {known}")
    wanted = set(asked) | set(PREREQUISITES)
    args.steps = [s for s in STEPS if s in wanted]
    args.budgets = {}
    for item in args.budget:
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if name not in STEPS or not seconds > 0 or seconds == float("inf"):
            raise CampaignError(f"--budget {item}: expected STEP=SECONDS with a known step")
        args.budgets[name] = seconds
    if not 0 < args.total_s < float("inf"):
        raise CampaignError(f"--total-s {args.total_s}: must be a positive number of seconds")
    args.policies = [x for x in args.policies.split(",") if x]
    if args.use_profile is not None and not (args.use_profile / "fit.json").is_file():
        raise CampaignError(f"--use-profile {args.use_profile}: no fit.json there")
    if not args.dry_run and not _cuda_visible():
        raise CampaignError("no CUDA GPU is visible: on a CPU, --dry-run runs the same steps")
    if args.out.exists() and any(args.out.iterdir()) and not args.force:
        raise CampaignError(f"--out {args.out} is not empty; choose a new one or pass --force")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def _cuda_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
    except CampaignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = run(args)
    print_table(summary)
    print(f"wrote {args.out / 'summary.json'}" + (f" and {args.pack}" if args.pack else ""))
    whole = "terminated" not in summary and len(summary["steps"]) == len(args.steps)
    fine = all(s["status"] in ("ok", "skipped") for s in summary["steps"].values())
    return 0 if whole and fine else 1


if __name__ == "__main__":
    sys.exit(main())
