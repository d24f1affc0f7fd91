"""``twin run --trace``: a replay writes the same files, with the same schema, as a simulation."""

import json

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from tests.workloads import TINY_QWEN3

pytest.importorskip("torch")

from twin.commands.run import run_command  # noqa: E402
from twin.outputs.metrics import (
    ITERATION_COLUMNS,  # noqa: E402
    RECORD_COLUMNS,  # noqa: E402
    TOKEN_COLUMNS,  # noqa: E402
)

app = typer.Typer(add_completion=False)
app.command("run")(run_command)
app.command("noop")(lambda: None)  # keeps "run" a subcommand, as in the real CLI
runner = CliRunner()


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "tiny-qwen3"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY_QWEN3))
    return d


def run(*args):
    return runner.invoke(app, ["run", "--quiet", "--device", "cpu", *args])


@pytest.mark.parametrize("clock", ["virtual", "wall"])
def test_replay_writes_the_simulators_files_and_schema(tmp_path, model_dir, clock):
    out = tmp_path / "run"
    result = run(
        "--model",
        str(model_dir),
        "--trace",
        "azure-conv",
        "--max-requests",
        "6",
        "--rate-scale",
        "20",
        "--clock",
        clock,
        "--policy",
        "static-split",
        "--policy-arg",
        "max_num_batched_tokens=512",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    for name in (
        "records.parquet",
        "iterations.parquet",
        "summary.json",
        "config.json",
        "latency_cdf.png",
        "timeline.png",
    ):
        assert (out / name).is_file(), name
    records = pd.read_parquet(out / "records.parquet")
    assert tuple(records.columns) == RECORD_COLUMNS + TOKEN_COLUMNS
    assert (records["status"] == "finished").all() and len(records) == 6
    assert [len(t) for t in records["token_times_s"]] == records["output_tokens"].tolist()
    iterations = pd.read_parquet(out / "iterations.parquet")
    assert tuple(iterations.columns) == ITERATION_COLUMNS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 6 and summary["clock"] == clock
    assert summary["engine"] == "runtime" and summary["device"] == "cpu"
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["qk_norm"] is True
    assert config["policy_params"]["max_num_batched_tokens"] == 512
    assert config["weights"] == "random (seed 0)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["--clock", "sundial"], "--clock 'sundial'"),
        (["--clock", "virtual"], "only applies to --trace"),
        (["--attention", "triton"], "--attention triton needs a CUDA device"),
        (["--weights", "/nonexistent/dir", "--trace", "azure-conv"], "not a directory"),
        (["--policy", "fifo", "--trace", "azure-conv"], "unknown policy 'fifo'"),
        (["--model", "no-such-model", "--trace", "azure-conv"], "no-such-model"),
        (
            ["--trace", "azure-conv", "--max-requests", "2", "--kv-blocks", "0"],
            "--kv-blocks must be positive",
        ),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, model_dir, args, message):
    result = run("--model", str(model_dir), "--out", str(tmp_path / "x"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_serving_exits_non_zero_when_the_engine_cannot_go_on(model_dir, monkeypatch):
    import uvicorn

    import gpu_runtime.server

    served = {}
    real_create_app = gpu_runtime.server.create_app

    def capture(serving, manage_engine=True, **kwargs):
        served["serving"] = serving
        return real_create_app(serving, manage_engine, **kwargs)

    def engine_dies_while_serving(self):
        serving = served["serving"]
        serving.loop.error = RuntimeError("device lost")
        serving.on_fatal(serving.loop.error)
        assert self.should_exit  # the server stops taking requests

    monkeypatch.setattr(gpu_runtime.server, "create_app", capture)
    monkeypatch.setattr(uvicorn.Server, "run", engine_dies_while_serving)
    result = runner.invoke(app, ["run", "--device", "cpu", "--model", str(model_dir)])
    assert result.exit_code == 1, result.output
    assert "the engine stopped" in result.output and "device lost" in result.output
