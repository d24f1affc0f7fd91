"""The measuring steps of ``bench/gpu_campaign.py``, in the order the campaign runs them
(the runtime's steps are in ``campaign_runtime.py``).

Each step takes the campaign (its settings, the state earlier steps left, the output
directory) and its deadline, writes its own results file as soon as it has them and returns
the figures the summary reports. A step that cannot run on this machine raises ``Skipped``
with the reason; long steps check the deadline between samples and keep what they measured.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from campaign_dry import CPU_UNITS

from profiler.grid import CORUN, ITERATION, SweepGrid, plan
from profiler.mixed_sweep import MixedGrid, measure_mixed, mixed_summary, with_mixed_columns
from profiler.partition import DeviceInfo, PartitionError
from profiler.profile_io import MIXED_COLUMNS

# Sweep rows by importance, so a sweep cut short by its budget has whole classes: device
# ceilings first (every fit leans on them), then whole iterations, then operators.
CLASS_ORDER = ("peak", "copy", ITERATION, "attn_decode", "attn_prefill", "gemm", "other")
SHAPE_KEY = ("op_name", "tokens", "batch", "context", "chunk", "prefix", "sms")
FLUSH_EVERY_S = 10.0


class Skipped(Exception):
    """This step cannot run here (the message says why); the campaign goes on."""


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, tuple | set | Path):
        return list(value) if not isinstance(value, Path) else str(value)
    raise TypeError(f"cannot store {type(value).__name__}")


def bench_runtime() -> Any:
    """``bench/runtime.py`` as a module: its decode, prefill and switch measurements."""
    path = Path(__file__).with_name("runtime.py")
    spec = importlib.util.spec_from_file_location("bench_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- metadata and ceilings -------------------------------------------------------------------


def step_meta(c: Any, deadline: float) -> dict[str, Any]:
    import torch

    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dry_run": c.dry_run,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "model": c.model_cfg.name,
        "versions": {d: _version(d) for d in ("triton", "cuda-python", "cuda-bindings", "simpy")},
    }
    if c.cuda:
        props = torch.cuda.get_device_properties(0)
        meta.update(
            device=str(props.name),
            num_sms=int(props.multi_processor_count),
            memory_bytes=int(props.total_memory),
            l2_bytes=int(getattr(props, "L2_cache_size", 0)),
            compute_capability=f"{props.major}.{props.minor}",
            nvidia_smi=_nvidia_smi(),
        )
        meta["driver"] = meta["nvidia_smi"].get("driver_version")
        c.info = DeviceInfo(
            index=0,
            name=meta["device"],
            num_sms=meta["num_sms"],
            min_sms=8 if props.major >= 9 else 4,
            granularity=8 if props.major >= 9 else 2,
            memory_bytes=meta["memory_bytes"],
            l2_bytes=meta["l2_bytes"] or 50 << 20,
            compute_capability=(props.major, props.minor),
            driver_version=None,
            backend="none",
        )
    else:
        meta.update(device="cpu", processor=platform.processor() or platform.machine())
        # The whole CPU as 132 SMs in groups of 8 (campaign_dry.CPU_UNITS says why).
        meta.update(threads=torch.get_num_threads(), num_sms=CPU_UNITS, driver=None)
        c.info = DeviceInfo(0, "cpu", CPU_UNITS, 8, 8, 1 << 30, 1 << 20, (0, 0), None, "none")
    c.meta = meta
    write_json(c.out / "meta.json", meta)
    return {k: meta.get(k) for k in ("device", "driver", "cuda", "torch", "num_sms")}


def _nvidia_smi() -> dict[str, str]:
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}
    values = done.stdout.strip().splitlines()[0].split(", ") if done.returncode == 0 else []
    return dict(zip(fields.split(","), values, strict=False))


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def step_peaks(c: Any, deadline: float) -> dict[str, Any]:
    import torch

    sizes = {"n": 16 << 20, "m": 256} if c.dry_run else {}
    peaks = bench_runtime().peaks(torch, c.device.type, **sizes)
    c.peaks = peaks
    write_json(c.out / "peaks.json", peaks)
    return {
        "copy_TB_per_s": peaks["copy_bytes_per_s"] / 1e12,
        "gemm_TFLOP_per_s": peaks["gemm_flops_per_s"] / 1e12,
    }


# -- partitions ------------------------------------------------------------------------------


def step_partitions(c: Any, deadline: float) -> dict[str, Any]:
    """The green-context pool: the first backend that builds it, SM counts read back, and a
    check that a partition confines a GEMM to its SMs."""
    if not c.cuda:
        raise Skipped("no CUDA GPU: a CPU has no SM partitions")
    from profiler.partition import PartitionPool

    grid = c.quick_grid()
    sizes = {s for s in grid.sms if s < c.info.num_sms} | set(grid.corun_decode_sms)
    tried: dict[str, str] = {}
    for backend in ("cuda-python", "torch"):
        try:
            c.pool = PartitionPool(0, sizes=sizes, backend=backend)
            break
        except PartitionError as exc:
            tried[backend] = str(exc)
        except Exception as exc:  # a driver binding that exists but breaks
            tried[backend] = f"{type(exc).__name__}: {exc}"
    else:
        write_json(c.out / "partitions.json", {"tried": tried})
        raise RuntimeError(f"no green-context backend works: {tried}")
    c.info = c.pool.info
    result: dict[str, Any] = {**c.pool.describe(), "tried_before": tried}
    result["confinement"] = _confinement(c)
    write_json(c.out / "partitions.json", result)
    return {
        "backend": result["backend"],
        "splits": len(result["splits"]),
        "sm_counts": result["sm_counts"],
        "confinement": result["confinement"]["speedup_over_smallest"],
        "confinement_ideal": result["confinement"]["ideal_speedup"],
    }


def _confinement(c: Any) -> dict[str, Any]:
    """A 4096^3 bf16 GEMM on the smallest partition and on the whole GPU: a partition that
    confines runs it about full/smallest times slower."""
    kernels, clock = c.measurement()
    small = min(s for s in c.pool.sm_counts())
    full = c.info.num_sms
    gemm = kernels.peak(4096)
    times = {}
    for sms in (small, full):
        clock.ready()
        times[sms] = float(np.median(clock.time([gemm], [1.0], c.pool.stream(sms))))
    return {
        "smallest_sms": small,
        "full_sms": full,
        "seconds": {str(k): v for k, v in times.items()},
        "speedup_over_smallest": times[small] / times[full],
        "ideal_speedup": full / small,
    }


# -- sweeps ----------------------------------------------------------------------------------


def measure_rows(c: Any, rows: list[dict], deadline: float, measure: Any) -> dict[str, Any]:
    """Time ``rows`` in order until the deadline, saving the samples every few seconds."""
    done = failed = 0
    flushed = time.monotonic()
    try:
        for row in rows:
            if time.monotonic() >= deadline:
                break
            try:
                c.samples.append({**row, **measure(row)})
                done += 1
            except PartitionError:
                raise
            except Exception as exc:  # one failing sample must not lose a step
                failed += 1
                c.errors.append(f"{row['op_class']}/{row['op_name']} on {row['sms']} SMs: {exc}")
                c.clock.recover()
            if time.monotonic() - flushed > FLUSH_EVERY_S:
                c.save_samples()
                flushed = time.monotonic()
    finally:  # interrupted or not, what was measured is on disk
        c.save_samples()
    cut_short = done + failed < len(rows)
    return {"planned": len(rows), "measured": done, "failed": failed, "cut_short": cut_short}


def step_sweep(c: Any, deadline: float) -> dict[str, Any]:
    from profiler.sweep import summarise

    grid = c.sweep_grid()
    rows = plan(c.model_cfg, replace(grid, corun_decode_sms=()), c.info.num_sms)
    rank = {k: i for i, k in enumerate(CLASS_ORDER)}
    rows.sort(key=lambda r: (rank.get(r["op_class"], len(rank)), *(r[k] for k in SHAPE_KEY)))
    sweep = c.sweep()
    return {
        "sm_counts": list(grid.sms),
        "attention": c.kernels.attention_backend,
        **measure_rows(c, rows, deadline, lambda r: summarise(sweep.measure(r))),
    }


def step_corun(c: Any, deadline: float) -> dict[str, Any]:
    from profiler.sweep import summarise

    if not c.cuda:
        raise Skipped("no CUDA GPU: co-runs need two SM partitions")
    if c.pool is None or c.info.backend != "cuda-python":
        raise Skipped("co-runs need two disjoint partitions (cuda-python green contexts)")
    grid = c.sweep_grid()
    # The plan ends with the co-run section: each lane alone on its partition, then together.
    grid_rows = len(plan(c.model_cfg, replace(grid, corun_decode_sms=()), c.info.num_sms))
    rows = plan(c.model_cfg, grid, c.info.num_sms)[grid_rows:]
    sweep, pairs = c.sweep(), {}

    def measure(row: dict) -> dict:
        if row["op_class"] != CORUN:
            return summarise(sweep.measure(row))
        key = tuple(row[k] for k in ("chunk", "prefix", "batch", "context"))
        key = (min(row["sms"], row["co_sms"]), max(row["sms"], row["co_sms"]), *key)
        if key not in pairs:
            pairs[key] = sweep.measure_corun(row)
        return summarise(pairs[key][row["op_name"]])

    result = measure_rows(c, rows, deadline, measure)
    result["slowdowns"] = corun_slowdowns(pd.DataFrame(c.samples))
    write_json(c.out / "corun.json", result)
    return result


def corun_slowdowns(samples: pd.DataFrame) -> list[dict[str, Any]]:
    """Each co-run lane's time over the same lane alone on the same partition."""
    if samples.empty or CORUN not in set(samples["op_class"]):
        return []
    alone = samples[samples["op_class"] == ITERATION]
    out = []
    for _, r in samples[samples["op_class"] == CORUN].iterrows():
        own = ("chunk", "prefix") if r["op_name"] == "prefill" else ("batch", "context")
        match = alone[(alone["op_name"] == r["op_name"]) & (alone["sms"] == r["sms"])]
        for k in own:
            match = match[match[k] == r[k]]
        if len(match):
            out.append(
                {
                    "lane": r["op_name"],
                    "sms": int(r["sms"]),
                    "co_sms": int(r["co_sms"]),
                    "shape": [int(r[k]) for k in ("chunk", "prefix", "batch", "context")],
                    "slowdown": float(r["median_s"] / match["median_s"].iloc[0]),
                }
            )
    return out


def step_mixed(c: Any, deadline: float) -> dict[str, Any]:
    kernels, clock = c.measurement()
    grid = MixedGrid(((16, 0, 2, 16), (8, 8, 4, 24))) if c.dry_run else MixedGrid.quick()
    full = c.info.num_sms
    stream = c.sweep().pool.stream(full)
    rows = [
        {"op_class": "mixed", "op_name": "mixed", "sms": full, "shape": shape}
        for shape in grid.shapes
    ]

    def measure(row: dict) -> dict:  # the row's "shape" key is not a samples column
        return measure_mixed(c.model_cfg, kernels, clock, stream, full, row["shape"])

    result = measure_rows(c, rows, deadline, measure)
    result.update(mixed_summary(with_mixed_columns(pd.DataFrame(c.samples))))
    result["grid"] = grid.to_dict()
    write_json(c.out / "mixed.json", result)
    return result


# -- the profile -----------------------------------------------------------------------------


def step_profile(c: Any, deadline: float) -> dict[str, Any]:
    from profiler.fit import fit_profile
    from profiler.mixed import MIXED_SAMPLES
    from profiler.mixed_sweep import MIXED, write_mixed_plot
    from profiler.plots import write_plots
    from profiler.profile_io import read_meta, read_samples, write_fit
    from twin.commands.profile import fit_mixed_cost

    if not c.samples:
        raise Skipped("no samples were measured in this run")
    directory = c.save_samples()
    samples, meta = read_samples(directory), read_meta(directory)
    fit = fit_profile(samples, meta)
    mixed_rows = samples[samples["op_class"] == MIXED]
    if len(mixed_rows):  # the latency model's mixed-batch cost, fitted from the same rows
        mixed_rows[list(MIXED_COLUMNS)].to_parquet(directory / MIXED_SAMPLES, index=False)
        fit["mixed"] = fit_mixed_cost(directory, fit, meta, None)
    write_fit(directory, fit)
    plots = [p.name for p in write_plots(directory, samples, fit, meta)]
    mixed = write_mixed_plot(directory / "mixed_vs_parts.png", samples, meta)
    plots += [mixed.name] if mixed else []
    c.profile_dir = directory
    summary = fit.get("summary", {})
    return {
        "samples": int(len(samples)),
        "cv_mape": {op: e.get("cv_mape") for op, e in fit["ops"].items()},
        "fit_mape": {op: v["mape"] for op, v in summary.get("mape", {}).items()},
        "decode_bandwidth_saturates_at_sms": summary.get("saturation", {}).get(
            "attn_decode_bandwidth_sms"
        ),
        "corun_scale": fit.get("corun", {}).get("scale"),
        "mixed_batch_cost": fit.get("mixed"),
        "overhead_ms": {k: 1e3 * v for k, v in fit["overhead"].items() if k.endswith("_s")},
        "plots": plots,
    }


def whole_device_grid(grid: SweepGrid, num_sms: int) -> SweepGrid:
    """``grid`` on the whole device alone, for a GPU whose partitions do not work."""
    return replace(grid, sms=(num_sms,), corun_decode_sms=())
