"""twin validate on CPU: the real engine with a tiny model against the simulator calibrated on
that same run."""

import json

import pytest
from typer.testing import CliRunner

from tests.workloads import TINY_QWEN3

pytest.importorskip("torch")

from twin.commands.cli import app  # noqa: E402
from twin.validate import finite_report  # noqa: E402

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validate")
    model = tmp / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_QWEN3))
    runs = {}
    for policy in ("vllm", "sglang"):
        runs[policy] = tmp / f"real-{policy}"
        invoke(
            "run",
            "--quiet",
            "--device",
            "cpu",
            "--model",
            model,
            "--trace",
            "azure-conv",
            "--max-requests",
            25,
            "--rate-scale",
            5,
            "--policy",
            policy,
            "--no-plots",
            "--out",
            runs[policy],
        )
    return tmp, runs


def test_calibrate_then_validate_gives_a_finite_report(real_runs):
    tmp, runs = real_runs
    cal = tmp / "cal"
    invoke("profile", "--refine-from", runs["vllm"], "--out", cal, "--quiet")
    calibration = json.loads((cal / "calibration.json").read_text())
    err = calibration["error"]
    assert err["train_after"]["mape"] < err["train_before"]["mape"]
    assert "test_after" in err

    out = tmp / "val"
    invoke(
        "validate",
        "--real-records",
        runs["vllm"],
        "--real-records",
        runs["sglang"],
        "--profile",
        cal,
        "--out",
        out,
    )
    report = json.loads((out / "validation.json").read_text())
    assert [r["policy"] for r in report["runs"]] == ["vllm", "sglang"]
    for run in report["runs"]:
        assert finite_report(run)
        assert run["iteration_error"]["iterations"] > 0
        assert "calibrated" in run["latency_model"]
    assert set(report["ranking"]["real"]) == {"vllm", "sglang"}
    assert isinstance(report["ranking"]["agree"], bool)
    for name in ("iteration_predicted_vs_measured", "latency_cdfs_real_vs_sim"):
        assert (out / "plots-vllm" / f"{name}.png").stat().st_size > 0


def test_validate_refuses_missing_or_foreign_directories(tmp_path, real_runs):
    result = runner.invoke(
        app, ["validate", "--real-records", str(tmp_path), "--out", str(tmp_path / "v")]
    )
    assert result.exit_code != 0 and "missing records.parquet" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["validate", "--out", str(tmp_path / "v2")])
    assert result.exit_code != 0 and "--real-records" in result.output
