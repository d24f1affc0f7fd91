"""bench/kv_pass_cost.py: both trees' KV passes timed over the same runs, and its flags."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location(
        "kv_pass_cost", ROOT / "bench" / "kv_pass_cost.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["kv_pass_cost"] = module
    spec.loader.exec_module(module)
    return module


def _trace(tmp_path: Path) -> Path:
    path = tmp_path / "azure.csv"
    rows = [f"2023-11-16 18:15:{10 + i:02d}.5000000,{300 + 40 * i},{20 + 7 * i}" for i in range(8)]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return path


def test_both_trees_time_the_same_runs_and_the_classes_get_their_own_functions_back(tmp_path):
    from policies.kvcache import KVBudget, KVCache

    before = (KVCache.grow_decodes, KVBudget.decode_needs)
    out = tmp_path / "cost.json"
    _module().main(
        ["--trace", str(_trace(tmp_path)), "--baseline", "HEAD", "--scales", "1,4"]
        + ["--repeats", "2", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["meta"]["latency_model"].startswith("H100") and saved["meta"]["setup"] == "vidur"
    assert [r["scale"] for r in saved["runs"]] == [1.0, 4.0]
    for run in saved["runs"]:
        assert run["iterations"] > 0
        for name in ("grow_decodes", "decode_needs", "loop"):
            row = run[name]
            assert row["baseline_cpu_s"] > 0 and row["current_cpu_s"] > 0
            assert row["current_over_baseline"] == pytest.approx(
                row["current_cpu_s"] / row["baseline_cpu_s"]
            )
    assert (KVCache.grow_decodes, KVBudget.decode_needs) == before


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--scales", "1,x"], "give numbers separated by commas"),
        (["--scales", "nan"], "positive and finite"),
        (["--baseline", "no-such-rev"], "--baseline no-such-rev"),
    ],
)
def test_bad_flags_are_named(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        _module().main(["--trace", str(_trace(tmp_path)), *flags])


def test_a_missing_trace_is_named(tmp_path):
    with pytest.raises(SystemExit, match="--trace: unknown trace"):
        _module().main(["--trace", str(tmp_path / "none.csv")])
