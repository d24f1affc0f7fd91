"""The files of a run, written the same way for the simulator and the runtime."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from policies import Slo
from twin.outputs import plots

RUN_FILES = ("records.parquet", "iterations.parquet", "summary.json", "config.json")


@dataclass
class RunOutputs:
    """A finished run's tables and settings, whichever engine ran it."""

    config: dict[str, Any]
    records: pd.DataFrame
    iterations: pd.DataFrame
    timeline: pd.DataFrame
    summary: dict[str, Any]
    decisions: list[tuple]

    def write(self, out: Path, title: str, num_sms: int, with_plots: bool = True) -> list[Path]:
        return write_outputs(
            out,
            self.records,
            self.iterations,
            self.timeline,
            self.summary,
            self.config,
            title,
            num_sms,
            with_plots,
        )


def write_outputs(
    out: Path,
    records: pd.DataFrame,
    iterations: pd.DataFrame,
    timeline: pd.DataFrame,
    summary: dict[str, Any],
    config: dict[str, Any],
    title: str,
    num_sms: int,
    with_plots: bool = True,
) -> list[Path]:
    """The files of a run, the same for the simulator and the runtime."""
    records.to_parquet(out / "records.parquet", index=False)
    iterations.to_parquet(out / "iterations.parquet", index=False)
    for name, data in (("summary.json", summary), ("config.json", config)):
        (out / name).write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    written = [out / f for f in RUN_FILES]
    if with_plots:
        slo = Slo(**config["slo"])
        written.append(plots.latency_cdfs(records, slo, title, out / "latency_cdf.png"))
        written.append(plots.run_timeline(records, timeline, title, out / "timeline.png", num_sms))
    return written


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
