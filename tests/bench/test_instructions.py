"""bench/instructions.py: bad flags in one line, and its worker's run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.bench.loader import ROOT, azure_trace, load_bench


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--first", "1", "--baseline", "HEAD"], "--first 1"),
        (["--scale", "nan", "--baseline", "HEAD"], "--scale nan"),
        (["--scale", "inf", "--baseline", "HEAD"], "--scale inf"),
        (["--first", "10"], "--baseline REV is required"),
    ],
)
def test_bad_flags_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit):
        load_bench("instructions").main(args)
    assert message in capsys.readouterr().err


def test_without_valgrind_it_says_how_to_get_it(monkeypatch):
    module = load_bench("instructions")
    monkeypatch.setattr(module.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="valgrind is not on the PATH"):
        module.main(["--baseline", "HEAD", "--first", "10"])


def test_a_bad_trace_is_one_line_before_any_counting(tmp_path, monkeypatch):
    module = load_bench("instructions")
    monkeypatch.setattr(module.shutil, "which", lambda name: "/bin/true")
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,trace\n1,2,3\n")
    for trace in (str(tmp_path / "missing.csv"), str(bad)):
        with pytest.raises(SystemExit, match="--trace"):
            module.main(["--baseline", "HEAD", "--trace", trace])


def test_the_worker_simulates_the_first_requests(tmp_path):
    trace = azure_trace(tmp_path)
    cmd = [
        sys.executable, str(ROOT / "bench" / "instructions.py"), "--worker", str(ROOT),
        "--trace", str(trace), "--scale", "2", "--first", "3",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert run["requests"] == 3 and run["iterations"] > 3
