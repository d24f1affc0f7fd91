"""bench/event_cost.py: bad flags in one line, and a fit that accounts for every event."""

from __future__ import annotations

import json

import pytest

from tests.bench.loader import azure_trace, load_bench


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "nan", "--trace", "x.csv"], "--scale nan"),
        (["--scale", "-1", "--trace", "x.csv"], "--scale -1"),
        (["--setup", "vs-vidur"], "needs --trace"),
        (["--trace", "no/such/trace.csv"], "not a file"),
        (["--setup", "job", "--requests", "1"], "--requests 1"),
    ],
)
def test_bad_flags_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit):
        load_bench("event_cost").main(args)
    assert message in capsys.readouterr().err


def test_an_out_that_is_a_folder_is_one_line_before_the_run(tmp_path, capsys):
    trace = azure_trace(tmp_path)
    with pytest.raises(SystemExit, match="a folder"):
        load_bench("event_cost").main(["--trace", str(trace), "--out", str(tmp_path)])
    assert "events for" not in capsys.readouterr().out


def test_an_unreadable_trace_is_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,trace\n1,2,3\n")
    with pytest.raises(SystemExit, match="cannot be read as a trace"):
        load_bench("event_cost").main(["--trace", str(bad)])


def test_every_event_is_timed_and_fitted(tmp_path, capsys):
    out = tmp_path / "cost.json"
    load_bench("event_cost").main(["--trace", str(azure_trace(tmp_path)), "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["requests"] == 8
    assert record["events"] >= 8  # each request's prefill ends a run at least
    assert sum(b["events"] for b in record["by_batch_size"]) == record["events"]
    assert 0 < record["events_cpu_s"] <= record["loop_cpu_s"]
    assert "datasheet" in record["latency_model"]
    assert "fit:" in capsys.readouterr().out
