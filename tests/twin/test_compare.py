"""twin compare: a small sweep end to end, and its bad-input errors."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from twin.commands.cli import app
from twin.compare import parse_policy_args, parse_rates, rate_mode

runner = CliRunner()


def compare(*args):
    return runner.invoke(app, ["compare", "--quiet", *[str(a) for a in args]])


def test_compare_writes_a_table_and_plots(tmp_path):
    out = tmp_path / "cmp"
    result = compare(
        "--trace",
        "azure-conv",
        "--policies",
        "vllm,nexus,duetserve",
        "--rates",
        "1,4",
        "--max-requests",
        120,
        "--workers",
        1,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "compare.csv")
    assert len(table) == 6
    assert list(dict.fromkeys(table["policy"])) == ["vllm", "nexus", "duetserve"]
    for col in (
        "throughput_rps",
        "goodput_rps",
        "slo_attainment",
        "ttft_p99_s",
        "tbt_p90_s",
        "mean_decode_sms",
        "offered_rps",
    ):
        assert table[col].notna().all(), col
    for _, rows in table.groupby("policy"):
        rows = rows.sort_values("rate")
        assert rows["throughput_rps"].is_monotonic_increasing
        assert rows["offered_rps"].iloc[1] == pytest.approx(4 * rows["offered_rps"].iloc[0])
    for name in ("latency_vs_load.png", "goodput.png", "partition_timeline.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(pd.read_parquet(out / "compare.parquet")) == 6


def test_length_only_trace_takes_poisson_rates(tmp_path):
    out = tmp_path / "cmp"
    result = compare(
        "--trace",
        "sharegpt",
        "--policies",
        "vllm,disagg",
        "--rates",
        "2,8",
        "--max-requests",
        80,
        "--workers",
        1,
        "--no-plots",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "compare.csv")
    assert sorted(table["offered_rps"].unique()) == [2.0, 8.0]
    disagg = table[table["policy"] == "disagg"]
    assert (disagg["gpus"] == 2).all()
    assert list(disagg["goodput_per_gpu_rps"]) == pytest.approx(list(disagg["goodput_rps"] / 2))


def test_compare_refuses_to_overwrite_and_resumes(tmp_path):
    out = tmp_path / "cmp"
    args = (
        "--policies",
        "vllm",
        "--rates",
        "1",
        "--max-requests",
        30,
        "--workers",
        1,
        "--no-plots",
        "--out",
        out,
    )
    assert compare(*args).exit_code == 0
    again = compare(*args)
    assert again.exit_code == 2 and "--resume" in again.output
    assert compare(*args, "--resume").exit_code == 0
    assert compare(*args, "--force").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rates", "a,b"], "--rates"),
        (["--rates", "0,1"], "positive"),
        (["--policies", "vllm,fifo"], "unknown policy 'fifo'"),
        (["--policy-arg", "nexus.bogus=1", "--policies", "nexus"], "bogus"),
        (["--policy-arg", "hysteresis=1"], "policy.key=value"),
        (["--workers", "-2"], "--workers"),
        (["--tbt-stat", "median"], "--tbt-stat"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
    result = compare("--max-requests", 10, "--out", tmp_path / "o", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_helpers():
    assert parse_rates("4, 1,2,2") == [1.0, 2.0, 4.0]
    assert parse_policy_args(["nexus.aging=3"], ["nexus", "vllm"]) == {
        "nexus": {"aging": "3"},
        "vllm": {},
    }
    assert rate_mode("azure-conv")[0] == "scale" and rate_mode("arxiv") == ("poisson", 0.0)
