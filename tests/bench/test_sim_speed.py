"""bench/sim_speed.py and bench/sim_job.py: the naive baseline beside twin, and capped jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.loader import azure_trace, load_bench

ROOT = Path(__file__).resolve().parents[2]


def test_each_rate_runs_the_naive_simulator_beside_twin(tmp_path):
    out = tmp_path / "speed.json"
    load_bench("sim_speed").main(
        [
            "--trace",
            str(azure_trace(tmp_path)),
            "--scales",
            "1,4",
            "--repeats",
            "1",
            "--no-stepping",
        ]
        + ["--out", str(out)]
    )
    runs = json.loads(out.read_text())["runs"]
    assert [r["rate_scale"] for r in runs] == [1.0, 4.0]
    for run in runs:
        naive = run["naive"]
        assert naive["requests"] == naive["finished"] == run["requests"] == 8
        assert naive["iterations"] > 0 and naive["latency_model"] == run["latency_model"]
        assert run["naive_over_twin_cpu"] == pytest.approx(naive["cpu_s"] / run["cpu_s"])
        assert run["naive_over_twin_wall"] == pytest.approx(naive["wall_s"] / run["wall_s"])


def test_no_naive_skips_it(tmp_path):
    out = tmp_path / "speed.json"
    load_bench("sim_speed").main(
        ["--trace", str(azure_trace(tmp_path)), "--scales", "1", "--repeats", "1", "--no-stepping"]
        + ["--no-naive", "--out", str(out)]
    )
    assert "naive" not in json.loads(out.read_text())["runs"][0]


def test_a_whole_job_writes_records_summary_and_plots_and_reports_its_cost(tmp_path):
    out = tmp_path / "jobs.json"
    load_bench("sim_speed").main(["--job-requests", "40", "--out", str(out)])
    saved = json.loads(out.read_text())
    job = saved["jobs"][0]
    assert job["ok"] and job["outcome"] == "finished" and job["requests"] == 40
    assert {"records.parquet", "summary.json", "latency_cdf.png"} <= set(job["files"])
    assert job["finished"] == 40 and job["latency_model"]
    assert job["cpu_s"] > 0 and job["peak_rss_mb"] > 0
    assert "n=40,rate=20," in job["trace"]


def test_a_job_over_its_memory_cap_fails_cleanly():
    sim_job = load_bench("sim_job")
    job = sim_job.run_job(sim_job.job_trace(20), memory_cap_gb=0.25, plots=False)
    assert not job["ok"]
    # Python says MemoryError; a BLAS that cannot start its threads under the cap may abort
    # instead, which still stops the job rather than letting it grow.
    assert job["outcome"] == "out of memory at the 0.25 GB cap" or job["outcome"].startswith(
        "failed (exit"
    )
    assert str(ROOT) not in job["log_tail"]  # saved with the results: no machine paths


def test_a_job_past_its_time_limit_is_killed():
    sim_job = load_bench("sim_job")
    job = sim_job.run_job(sim_job.job_trace(20), timeout_s=0.2)
    assert not job["ok"] and job["outcome"] == "killed after 0.2 s"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--job-requests", "1e6"], "--job-requests 1e6: give whole numbers"),
        (["--job-requests", "0"], "each size must be at least 1"),
        (["--job-requests", "10", "--memory-cap-gb", "nan"], "--memory-cap-gb nan: give a"),
        (["--job-requests", "10", "--job-rate", "-1"], "--job-rate -1.0: give a positive"),
    ],
)
def test_bad_job_flags_are_named(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_bench("sim_speed").main(flags)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_job_on_another_tree_imports_that_tree_only(tmp_path):
    tree = tmp_path / "tree"
    (tree / "twin" / "commands").mkdir(parents=True)
    (tree / "twin" / "commands" / "cli.py").write_text(
        "def main(argv):\n    print('the other tree ran', argv[0])\n    raise SystemExit(3)\n"
    )
    job = load_bench("sim_job").run_job(load_bench("sim_job").job_trace(5), tree=tree)
    assert job["outcome"] == "failed (exit 3)"
    assert "the other tree ran simulate" in job["log_tail"]


def test_jobs_beside_a_baseline_commit_report_ratios(tmp_path):
    out = tmp_path / "jobs.json"
    load_bench("sim_speed").main(
        ["--job-requests", "30", "--baseline", "HEAD", "--no-plots", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    job = saved["jobs"][0]
    assert job["ok"] and job["baseline"]["ok"] and len(saved["baseline"]) == 40
    assert job["baseline"]["finished"] == job["finished"] == 30
    assert job["cpu_s_current_over_baseline"] == job["cpu_s"] / job["baseline"]["cpu_s"]
