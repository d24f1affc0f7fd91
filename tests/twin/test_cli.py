import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from twin.commands.cli import app

runner = CliRunner()


def simulate(*args: str):
    return runner.invoke(app, ["simulate", "--quiet", *args])


def test_simulate_writes_records_summary_config_and_plots(tmp_path):
    out = tmp_path / "run"
    result = simulate("--trace", "azure-conv", "--max-requests", "150", "--out", str(out))
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
    assert len(records) == 150
    assert (records["status"] == "finished").all()
    assert [len(t) for t in records["token_times_s"]] == records["output_tokens"].tolist()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 150 and summary["throughput_rps"] > 0
    label = summary["latency_model"]
    assert label.startswith("operator times: measured (aiconfigurator-core") and "H100" in label
    assert label.endswith("SM scaling and contention: modelled")
    config = json.loads((out / "config.json").read_text())
    assert config["latency_model"]["kind"] == "MeasuredModel"
    assert config["latency_model"]["tables"]["stack"] == "vllm"
    assert config["policy"] == "vllm" and config["policy_params"]["max_num_batched_tokens"] == 8192
    assert config["model_config"]["num_layers"] == 32


def test_simulate_refuses_to_overwrite_a_run(tmp_path):
    out = tmp_path / "run"
    assert simulate("--max-requests", "20", "--out", str(out), "--no-plots").exit_code == 0
    again = simulate("--max-requests", "20", "--out", str(out))
    assert again.exit_code == 2
    assert "already holds a run" in again.output
    assert simulate("--max-requests", "20", "--out", str(out), "--force").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "fifo"], "unknown policy 'fifo'"),
        (["--trace", "nonexistent-trace"], "nonexistent-trace"),
        (["--policy-arg", "max_num_seqs"], "key=value"),
        (["--policy-arg", "bogus=1"], "no parameter 'bogus'"),
        (["--model", "no-such-model"], "neither a bundled config"),
        (["--gpu", "tpu"], "is not known; choose one of"),
        (["--stack", "tgi"], "--stack"),
        (["--latency", "guess"], "--latency"),
        (["--rate-scale", "-1"], "--rate-scale"),
        (["--tbt-stat", "median"], "--tbt-stat"),
        (["--slo-tbt", "0"], "must be positive"),
        (["--policy", "static-split", "--policy-arg", "decode_sms=5"], "not a valid split"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, args, message):
    result = simulate("--max-requests", "10", "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_simulate_split_policy_on_a_trace_file(tmp_path, shared_traces):
    out = tmp_path / "split"
    result = simulate(
        "--trace",
        str(shared_traces / "azure2023_code.csv"),
        "--policy",
        "static-split",
        "--policy-arg",
        "decode_sms=48",
        "--duration",
        "60",
        "--out",
        str(out),
        "--no-plots",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == summary["requests"] > 50
    assert summary["mean_decode_sms"] == pytest.approx(48)


def test_policy_config_file_sets_policy_and_params_and_args_override(tmp_path):
    cfg = tmp_path / "best.json"
    cfg.write_text(json.dumps({"policy": "nexus", "params": {"hysteresis": 0.2, "aging": 5}}))
    out = tmp_path / "run"
    result = simulate(
        "--max-requests",
        "30",
        "--no-plots",
        "--policy-config",
        str(cfg),
        "--policy-arg",
        "aging=7",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["policy"] == "nexus"
    assert config["policy_params"]["hysteresis"] == 0.2
    assert config["policy_params"]["aging"] == 7.0


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("not json", [], "expected JSON like"),
        ('{"policy": "nexus"}', ["--policy", "vllm"], "differs from 'nexus'"),
    ],
)
def test_bad_policy_config_is_one_line(tmp_path, content, extra, message):
    cfg = tmp_path / "c.json"
    cfg.write_text(content)
    result = simulate(
        "--max-requests", "5", "--policy-config", str(cfg), *extra, "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_gpus_lists_every_gpu_with_its_source():
    from profiler.gpus import GPUS

    result = CliRunner().invoke(app, ["gpus"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for key in GPUS:
        assert key in result.output
    assert "measured: vllm 0.24.0" in result.output and "datasheet roofline" in result.output
    assert "aiconfigurator-core 0.12.0" in result.output


def test_simulate_on_another_gpu_and_stack_and_on_the_datasheet(tmp_path):
    for args, expect in (
        (["--gpu", "a100", "--stack", "trtllm"], "A100 SXM, TRT-LLM 1.0.0"),
        (["--gpu", "l20"], "L20 48GB roofline (datasheet estimate"),
        (["--latency", "datasheet"], "H100-SXM5-80GB roofline (datasheet estimate"),
    ):
        out = tmp_path / args[-1]
        result = simulate("--max-requests", "30", "--out", str(out), "--no-plots", *args)
        assert result.exit_code == 0, result.output
        assert expect in json.loads((out / "summary.json").read_text())["latency_model"]
