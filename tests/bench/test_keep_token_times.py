"""bench/keep_token_times.py: the same run with and without per-request token times."""

from __future__ import annotations

import json

import pytest

from tests.bench.loader import load_bench

TRACE = "synthetic:n=80,rate=8,prompt=lognormal(300,0.5),output=lognormal(40,0.5),seed=1"


def test_both_ways_give_the_same_records_and_ratios(capsys):
    assert (
        load_bench("keep_token_times").main(["--trace", TRACE, "--scales", "1,3", "--repeats", "1"])
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["scale"] for r in rows] == [1.0, 3.0]
    for row in rows:
        assert row["requests"] == 80 and row["records_equal"]
        on, off = row["kept_loop_cpu_s"], row["not_kept_loop_cpu_s"]
        assert on > 0 and off > 0
        assert row["ratio_loop_cpu_s_off_over_on"] == pytest.approx(off / on, rel=0.01, abs=2e-3)
        assert "datasheet" in row["latency_model"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scales", "1,x"], "give numbers"),
        (["--scales", "0"], "positive"),
        (["--repeats", "0"], "1 or more"),
    ],
)
def test_bad_flags_get_one_line(args, message):
    with pytest.raises(SystemExit, match=message):
        load_bench("keep_token_times").main(["--trace", TRACE, *args])
