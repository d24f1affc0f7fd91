"""One sweep runner: many independent simulations, on this process, local processes or Ray.

A sweep is a list of ``SimConfig`` specs; each becomes one row of a results table (the spec's
columns and its run summary). Results stream back as simulations finish, are written to a
parquet file after every row (atomically, so an interrupted sweep loses nothing), and a rerun
with the same file skips every spec that already has a good row, so resuming duplicates
nothing. A spec that raises becomes an error row; the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import pandas as pd
from rich.markup import escape

from twin.errors import TwinError
from twin.experiment import SimConfig, load_workload, simulate

SPEC_COLUMNS = (
    "spec_hash",
    "trace",
    "policy",
    "policy_args",
    "rate",
    "rate_scale",
    "seed",
    "max_requests",
    "duration_s",
    "slo_ttft_s",
    "slo_tbt_s",
    "status",
    "error",
)
_WORKLOAD_FIELDS = (
    "trace",
    "format",
    "rate",
    "cv",
    "seed",
    "start_s",
    "duration_s",
    "rate_scale",
    "max_requests",
)
# Per worker process: each trace and each latency model is loaded once, then reused.
_workloads: dict[tuple, Any] = {}
_models: dict[tuple, Any] = {}


def spec_hash(cfg: SimConfig) -> str:
    blob = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_workload(cfg: SimConfig):
    key = tuple(getattr(cfg, f) for f in _WORKLOAD_FIELDS)
    wl = _workloads.get(key)
    if wl is None:
        if len(_workloads) > 64:
            _workloads.clear()
        wl = _workloads[key] = load_workload(cfg)
    return wl


def cached_model(cfg: SimConfig):
    from profiler.config import load_model_config
    from twin.latency import load_latency_model

    key = (cfg.model, cfg.gpu, cfg.profile, cfg.stack, cfg.latency)
    model = _models.get(key)
    if model is None:
        model = _models[key] = load_latency_model(
            load_model_config(cfg.model), cfg.gpu, cfg.profile, cfg.stack, cfg.latency
        )
    return model


def spec_columns(cfg: SimConfig) -> dict[str, Any]:
    return {
        "spec_hash": spec_hash(cfg),
        "trace": cfg.trace,
        "policy": cfg.policy,
        "policy_args": json.dumps(cfg.policy_args, sort_keys=True, default=str),
        "rate": math.nan if cfg.rate is None else float(cfg.rate),
        "rate_scale": float(cfg.rate_scale),
        "seed": int(cfg.seed),
        "max_requests": -1 if cfg.max_requests is None else int(cfg.max_requests),
        "duration_s": math.nan if cfg.duration_s is None else float(cfg.duration_s),
        "slo_ttft_s": cfg.slo.ttft_s,
        "slo_tbt_s": cfg.slo.tbt_s,
    }


def run_spec(cfg: SimConfig) -> dict[str, Any]:
    """One simulation as one row; an exception becomes an error row, never a crash."""
    row = spec_columns(cfg)
    try:
        result = simulate(
            cfg,
            workload=cached_workload(cfg),
            latency_model=cached_model(cfg),
            token_times=False,  # a sweep keeps summaries only
        )
    except Exception as exc:  # noqa: BLE001  (a sweep reports every failure and goes on)
        return {**row, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    scalars = {k: v for k, v in result.summary.items() if isinstance(v, int | float | str | bool)}
    return {**scalars, **row, "status": "ok", "error": ""}


# ----------------------------------------------------------------------------- executors
class InProcessExecutor:
    """Runs every item here, one after another: for debugging and tiny sweeps."""

    workers = 1

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        for item in items:
            yield fn(item)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """Local worker processes (all cores by default); needs nothing running."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers)
        pending = {self._pool.submit(fn, item) for item in items}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class RayExecutor:
    """Ray tasks: ``address="auto"`` starts or joins a local runtime, else joins that cluster."""

    def __init__(self, address: str = "auto", num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise TwinError("--ray needs Ray: pip install 'twin[ray]'") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address == "auto":
                try:
                    ray.init(address="auto", log_to_driver=False)
                except ConnectionError:
                    ray.init(num_cpus=num_cpus, log_to_driver=False, include_dashboard=False)
            else:
                ray.init(address=address, log_to_driver=False)
            self._started = True
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self._remote = ray.remote(_call)

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        ray = self._ray
        fn_ref = ray.put(fn)
        pending = [self._remote.remote(fn_ref, item) for item in items]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def _call(fn: Callable, item: Any) -> Any:
    return fn(item)


def make_executor(workers: int = 0, ray: str | None = None):
    """``ray`` (an address or "auto") wins; else ``workers`` local processes (0: all cores,
    1: in this process)."""
    if ray:
        return RayExecutor(ray)
    if workers < 0:
        raise TwinError(f"--workers must be 0 (all cores) or more, got {workers}")
    if workers == 1:
        return InProcessExecutor()
    return ProcessExecutor(workers or None)


# ----------------------------------------------------------------------------- the runner
def load_results(path: Path | None) -> pd.DataFrame:
    if path is None or not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise TwinError(
            f"{path}: not a sweep results file ({exc}); move it or pick another"
        ) from None


def _save(table: pd.DataFrame, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".parquet.tmp")
    os.close(fd)
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_sweep(
    specs: list[SimConfig],
    executor=None,
    results: Path | None = None,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    label: str = "sweep",
) -> pd.DataFrame:
    """Run every spec not already done in ``results``; one row per spec, in the specs' order."""
    from twin.commands.console import console, progress_bar

    executor = executor or InProcessExecutor()
    hashes = [spec_hash(s) for s in specs]
    old = load_results(results)
    # Every row the file holds, other sweeps' included, so saving never drops any.
    rows: dict[str, dict[str, Any]] = {}
    if not old.empty and "spec_hash" in old:
        rows = {row["spec_hash"]: row for row in old.to_dict("records")}
    todo, seen = [], set()
    for h, spec in zip(hashes, specs, strict=True):
        if rows.get(h, {}).get("status") != "ok" and h not in seen:
            todo.append(spec)
            seen.add(h)
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
    with progress_bar(label, enabled=progress) as update:
        update(0, len(todo))
        for i, row in enumerate(executor.map_unordered(run_spec, todo), 1):
            rows[row["spec_hash"]] = row
            if row["status"] != "ok":
                console.print(
                    f"[red]failed[/] {row['policy']} on {row['trace']} "
                    f"(rate {row['rate']}, x{row['rate_scale']}): {escape(str(row['error']))}",
                    highlight=False,
                )
            if results is not None:
                _save(pd.DataFrame(list(rows.values())), results)
            if on_row is not None:
                on_row(row)
            update(i, len(todo))
    return pd.DataFrame([rows[h] for h in dict.fromkeys(hashes) if h in rows])
