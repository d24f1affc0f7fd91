"""bench/vs_vidur.py: several traces and rates in one run, CPU and per-request figures.

The parts that need Vidur run only where its environment is set up (``--setup``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.bench.loader import load_bench

ROOT = Path(__file__).resolve().parents[2]


def test_cases_are_trace_at_rate_pairs():
    parse = load_bench("vs_vidur").parse_cases
    assert parse("azure-conv-full@1, azure-conv-full@2,a@b.csv@0.5") == [
        ("azure-conv-full", 1.0),
        ("azure-conv-full", 2.0),
        ("a@b.csv", 0.5),
    ]
    for bad in ("azure-conv", "@2", "azure-conv@0", "azure-conv@inf", "azure-conv@x", ","):
        with pytest.raises(SystemExit, match="--cases"):
            parse(bad)


def test_each_case_gets_its_own_clipped_trace_files(tmp_path, monkeypatch):
    vs = load_bench("vs_vidur")
    monkeypatch.setattr(vs, "WORK", tmp_path)
    conv = vs.prepare_trace("azure-conv", [50, None], 1.0, tag="c0")
    fast = vs.prepare_trace("azure-conv", [50], 4.0, tag="c1")
    assert len({p for _, p in conv + fast}) == 3
    slow, quick = pd.read_csv(conv[0][1]), pd.read_csv(fast[0][1])
    assert len(slow) == 50 and conv[1][0] > 50
    assert (slow["PromptTokenCount"] + slow["CompletionTokenCount"]).max() <= vs.MAX_SEQ_LEN
    assert quick["Time"].iloc[-1] == pytest.approx(slow["Time"].iloc[-1] / 4)


def _args(**kw) -> argparse.Namespace:
    base = {"max_num_seqs": 128, "max_tokens": 4096, "timeout": 300.0}
    return argparse.Namespace(**{**base, **kw})


def test_twin_child_reports_wall_and_cpu_per_simulated_request(tmp_path, monkeypatch):
    vs = load_bench("vs_vidur")
    monkeypatch.setattr(vs, "WORK", tmp_path)
    ((n, trace),) = vs.prepare_trace("azure-conv", [40], 2.0, tag="c0")
    runs = [vs.run_twin(n, trace, _args(), 6499, f"r{i}") for i in range(2)]
    assert all(r["ok"] for r in runs), runs
    row = vs.summarize_runs(n, runs)
    assert 0 < row["simulate_cpu_s"] <= row["cpu_s"]
    assert row["simulate_cpu_us_per_request"] == pytest.approx(row["simulate_cpu_s"] / n * 1e6)
    assert row["simulate_us_per_request"] == pytest.approx(row["simulate_s"] / n * 1e6)
    assert row["metrics"]["finished"] == n


def test_twin_commit_names_this_checkout():
    commit = load_bench("vs_vidur").twin_commit()
    assert len(commit.split()[0]) == 40 or commit.startswith("unknown")


VIDUR = ROOT / ".bench-venv" / "vidur" / "bin" / "python"


@pytest.mark.skipif(not VIDUR.exists(), reason="Vidur is not set up (bench/vs_vidur.py --setup)")
def test_one_run_covers_every_case_with_cpu_ratios_and_vidur_versions(tmp_path, monkeypatch):
    vs = load_bench("vs_vidur")
    out = tmp_path / "vs.json"
    monkeypatch.setattr(
        sys,
        "argv",
        ["vs_vidur.py", "--cases", "azure-conv@1,azure-code@2", "--sizes", "30"]
        + ["--repeats", "1", "--no-cold", "--patch-vidur-restart", "--out", str(out)],
    )
    vs.main()
    payload = json.loads(out.read_text())
    assert [(c["trace"], c["rate_scale"]) for c in payload["cases"]] == [
        ("azure-conv", 1.0),
        ("azure-code", 2.0),
    ]
    for case in payload["cases"]:
        twin, vidur = case["results"]["twin"]["30"], case["results"]["vidur-vllm"]["30"]
        assert twin["ok"] and vidur["ok"]
        assert vidur["speedup_simulate_cpu"] == pytest.approx(
            vidur["simulate_cpu_s"] / twin["simulate_cpu_s"]
        )
        assert vidur["speedup_process_cpu"] == pytest.approx(vidur["cpu_s"] / twin["cpu_s"])
    meta = payload["meta"]
    assert meta["vidur_packages"]["vidur"] == vs.VIDUR_VERSION
    assert meta["vidur_packages"]["scikit-learn"]
    assert meta["twin_commit"]
