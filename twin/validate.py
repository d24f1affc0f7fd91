"""How far the simulator is from the real engine on the same trace, policy and seed.

A real run is a directory ``twin run --trace`` wrote. Validation rebuilds the simulation that
run corresponds to (trace window, rate, seed, policy and its parameters, SLOs, KV blocks), runs
it with the latency model under test, and reports:

- per-iteration latency error: the model's prediction for every pass the real engine ran
  alone, against its measured duration (MAPE, p50/p99 of the relative error);
- request metrics: TTFT, TBT and E2E percentiles and throughput, simulated against real;
- with several runs (policies), whether the simulator ranks them as the hardware did.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from policies import Slo
from profiler.calibrate import alone_rows, iteration_errors, predict_rows
from twin.errors import TwinError
from twin.experiment import RunResult, SimConfig, simulate
from twin.sim import EngineConfig

METRICS = (
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "tbt_p50_s",
    "tbt_p90_s",
    "tbt_p99_s",
    "e2e_p50_s",
    "e2e_p99_s",
    "throughput_rps",
    "goodput_rps",
)
RANK_BY = "goodput_rps"


@dataclass
class RealRun:
    """A run ``twin run --trace`` wrote."""

    path: Path
    records: pd.DataFrame
    iterations: pd.DataFrame
    summary: dict[str, Any]
    config: dict[str, Any]

    @staticmethod
    def load(path: Path, flag: str = "--real-records") -> RealRun:
        files = ("records.parquet", "iterations.parquet", "summary.json", "config.json")
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise TwinError(
                f"{flag} {path}: missing {', '.join(missing)}; give a directory written "
                "by `twin run --trace`"
            )
        try:
            run = RealRun(
                path,
                pd.read_parquet(path / files[0]),
                pd.read_parquet(path / files[1]),
                json.loads((path / files[2]).read_text()),
                json.loads((path / files[3]).read_text()),
            )
        except (OSError, ValueError, RecursionError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TwinError(f"{flag} {path}: unreadable run files ({first})") from None
        if not isinstance(run.summary, dict) or not isinstance(run.config, dict):
            raise TwinError(f"{flag} {path}: summary.json and config.json must be JSON objects")
        if run.summary.get("engine") != "runtime":
            # A simulated run compared with itself would validate any latency model.
            raise TwinError(
                f"{flag} {path} holds a simulated run (`twin simulate`), not a real one; give a "
                "directory written by `twin run --trace`"
            )
        return run

    @property
    def policy(self) -> str:
        return str(self.summary.get("policy", self.config.get("policy", "?")))

    def sim_config(self, profile: str | None = None) -> SimConfig:
        """The simulation of this run: same workload, seed, policy, SLOs and KV blocks."""
        c = self.config
        try:
            runtime = c.get("runtime", {})
            return SimConfig(
                trace=c["trace"],
                format=c.get("format"),
                rate=c.get("rate"),
                cv=float(c.get("cv", 1.0)),
                rate_scale=float(c.get("rate_scale", 1.0)),
                start_s=float(c.get("start_s", 0.0)),
                duration_s=c.get("duration_s"),
                max_requests=c.get("max_requests"),
                seed=int(c.get("seed", 0)),
                policy=c["policy"],
                policy_args=dict(c.get("policy_params", {})),
                model=c["model"],
                gpu=c.get("gpu", "h100"),
                stack=c.get("stack", "vllm"),
                latency=c.get("latency", "measured"),
                profile=profile if profile is not None else c.get("profile"),
                slo=Slo(**c["slo"]),
                engine=EngineConfig(
                    num_kv_blocks=int(self.summary["kv_blocks"]),
                    block_size=int(runtime.get("block_size", 16)),
                ),
            )
        except (KeyError, TypeError) as exc:
            raise TwinError(
                f"--real-records {self.path}: config.json lacks {exc}; record it with `twin run "
                "--trace` of this version"
            ) from None


def relative_error(sim: float, real: float) -> float:
    if not (math.isfinite(sim) and math.isfinite(real)) or real == 0:
        return math.nan
    return (sim - real) / real


def compare(real: RealRun, sim: RunResult) -> dict[str, Any]:
    """The error report of one real run against its simulation."""
    rows = alone_rows(real.iterations)
    measured = (rows["end_s"] - rows["start_s"]).to_numpy(float)
    recorded = iteration_errors(rows["predicted_s"].to_numpy(float), measured)
    remodelled = iteration_errors(predict_rows(sim.model, rows), measured) if len(rows) else {}
    metrics = {
        name: {
            "real": float(real.summary.get(name, math.nan)),
            "sim": float(sim.summary.get(name, math.nan)),
            "error": relative_error(
                float(sim.summary.get(name, math.nan)), float(real.summary.get(name, math.nan))
            ),
        }
        for name in METRICS
    }
    return {
        "policy": real.policy,
        "real_run": str(real.path),
        "device": real.summary.get("device"),
        "latency_model": sim.model.label,
        "requests": int(real.summary.get("requests", 0)),
        "iteration_error": remodelled,
        "iteration_error_at_run_time": recorded,
        "metrics": metrics,
    }


def ranking(reports: list[dict[str, Any]], key: str = RANK_BY) -> dict[str, Any]:
    """Policies ordered best first by ``key``, on hardware and in simulation."""
    real = sorted(reports, key=lambda r: -r["metrics"][key]["real"])
    sim = sorted(reports, key=lambda r: -r["metrics"][key]["sim"])
    real_order = [r["policy"] for r in real]
    sim_order = [r["policy"] for r in sim]
    return {"by": key, "real": real_order, "sim": sim_order, "agree": real_order == sim_order}


@dataclass
class Validation:
    reports: list[dict[str, Any]]
    ranking: dict[str, Any] | None
    runs: list[tuple[RealRun, RunResult]]

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.reports, "ranking": self.ranking}


def validate(real_dirs: list[Path], profile: str | None = None) -> Validation:
    reals = [RealRun.load(Path(d)) for d in real_dirs]
    pairs, reports = [], []
    for real in reals:
        sim = simulate(real.sim_config(profile))
        pairs.append((real, sim))
        reports.append(compare(real, sim))
    rank = ranking(reports) if len(reports) > 1 else None
    return Validation(reports, rank, pairs)


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, real, sim, error) strings for a table."""
    rows = []
    it = report["iteration_error"]
    if it:
        rows.append(("iteration MAPE", "", "", f"{it['mape']:.1%}"))
        rows.append(("iteration p50 / p99 error", "", "", f"{it['p50']:.1%} / {it['p99']:.1%}"))
    for name, m in report["metrics"].items():
        unit = 1e3 if name.startswith("tbt") else 1.0
        fmt = "{:.1f} ms" if unit == 1e3 else "{:.3g}"
        rows.append(
            (
                name,
                fmt.format(m["real"] * unit),
                fmt.format(m["sim"] * unit),
                "n/a" if math.isnan(m["error"]) else f"{m['error']:+.1%}",
            )
        )
    return rows


def finite_report(report: dict[str, Any]) -> bool:
    """Every error in the report is a number (a check for tests and scripts)."""
    values = [report["iteration_error"].get("mape", math.nan)]
    values += [m["error"] for m in report["metrics"].values() if m["real"] not in (0.0,)]
    return bool(np.all(np.isfinite(values)))
