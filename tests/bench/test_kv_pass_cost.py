"""bench/kv_pass_cost.py: both trees' KV passes timed over the same runs, and its flags."""

from __future__ import annotations

import json

import pytest

from tests.bench.loader import azure_trace, load_bench


def test_both_trees_time_the_same_runs_and_the_classes_get_their_own_functions_back(tmp_path):
    from policies.kvcache import KVBudget, KVCache

    before = (KVCache.grow_decodes, KVBudget.decode_needs)
    out = tmp_path / "cost.json"
    load_bench("kv_pass_cost").main(
        ["--trace", str(azure_trace(tmp_path)), "--baseline", "HEAD", "--scales", "1,4"]
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
        load_bench("kv_pass_cost").main(["--trace", str(azure_trace(tmp_path)), *flags])


def test_a_missing_trace_is_named(tmp_path):
    with pytest.raises(SystemExit, match="--trace: unknown trace"):
        load_bench("kv_pass_cost").main(["--trace", str(tmp_path / "none.csv")])
