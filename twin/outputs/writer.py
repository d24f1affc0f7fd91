"""The files of a run, written the same way for the simulator and the runtime."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from policies import Slo
from twin.core.tokens import TokenStats
from twin.outputs import plots
from twin.outputs.metrics import records_tokens

RUN_FILES = ("records.parquet", "iterations.parquet", "summary.json", "config.json")
PLOT_FILES = ("latency_cdf.png", "timeline.png")


@dataclass
class RunOutputs:
    """A finished run's tables and settings, whichever engine ran it."""

    config: dict[str, Any]
    records: pd.DataFrame
    iterations: pd.DataFrame
    timeline: pd.DataFrame
    summary: dict[str, Any]
    decisions: list[tuple]
    # The token statistics the metrics came from (None: computed from records' token times).
    tokens: TokenStats | None = field(default=None, kw_only=True)

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
            self.tokens,
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
    tokens: TokenStats | None = None,
) -> list[Path]:
    """The files of a run, the same for the simulator and the runtime; the plots draw the
    token gaps and times from ``tokens`` (else from the records' token times)."""
    out.mkdir(parents=True, exist_ok=True)
    records.to_parquet(out / "records.parquet", index=False)
    iterations.to_parquet(out / "iterations.parquet", index=False)
    for name, data in (("summary.json", summary), ("config.json", config)):
        (out / name).write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    written = [out / f for f in RUN_FILES]
    if with_plots:
        slo = Slo(**config["slo"])
        label = plot_label(summary)
        if tokens is None:
            tokens = records_tokens(records, slo.tbt_statistic)
        written.append(plots.latency_cdfs(records, slo, title, out / PLOT_FILES[0], label, tokens))
        written.append(
            plots.run_timeline(tokens, timeline, title, out / PLOT_FILES[1], num_sms, label)
        )
    return written


def plot_label(summary: dict[str, Any]) -> str:
    """Which latency model made a run's times: a simulated run's, or a real run's clock."""
    model = str(summary.get("latency_model", ""))
    if summary.get("clock") == "wall":
        return (
            f"none for the times: measured on {summary.get('device', 'the device')} "
            f"(wall clock); policies predicted with {model}"
        )
    if summary.get("clock") == "virtual":
        return f"{model} (virtual clock: the real engine ran, the model timed it)"
    return model


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
