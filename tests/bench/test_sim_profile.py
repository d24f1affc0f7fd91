"""bench/sim_profile.py: the tiled workload it profiles, and one short profiled run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.bench.loader import load_bench


def _trace(tmp_path: Path) -> Path:
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.5720150,879,5\n"
    )
    return path


def test_tiles_the_trace_end_to_end(tmp_path):
    work = load_bench("sim_profile").tiled(str(_trace(tmp_path)), 7)
    assert len(work) == 9  # three copies of three requests
    assert np.all(np.diff(work.arrival_s) > 0)  # each copy starts after the last one ends
    assert list(work.output_tokens) == [44, 109, 5] * 3


def test_one_profiled_run_reports_its_counts(tmp_path, capsys):
    code = load_bench("sim_profile").main(
        ["--trace", str(_trace(tmp_path)), "--requests", "6", "--top", "3"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["requests"] == 6 and report["iterations"] > 0 and report["profiled"]
    assert report["latency_model"].startswith("operator times: measured")
