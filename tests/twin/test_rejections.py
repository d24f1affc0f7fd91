"""Requests refused at arrival: each carries its reason, the summary counts them, and they
miss the SLOs; the cases that used to run silently wrong or stall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from profiler.config import load_model_config
from twin.checks import check_results
from twin.commands.cli import app
from twin.errors import SimulationError
from twin.experiment import SimConfig, simulate
from twin.latency import load_latency_model
from twin.sim import EngineConfig

runner = CliRunner()
CONFIGS = Path(__file__).parents[2] / "profiler" / "configs"


def test_rejected_requests_carry_a_reason_and_count_as_slo_misses():
    result = simulate(
        SimConfig(trace="azure-conv", max_requests=200, engine=EngineConfig(num_kv_blocks=8))
    )
    s, records = result.summary, result.records
    rejected = records[records["status"] == "rejected"]
    assert len(rejected) == s["rejected"] > 0
    assert set(rejected["reject_reason"]) == {"kv_capacity"}
    assert s["rejected_by_reason"] == {"kv_capacity": s["rejected"]}
    met = result.records.shape[0] - s["rejected"]  # at most every served request met the SLOs
    assert s["slo_attainment"] <= met / len(records)
    assert (records.loc[records["status"] == "finished", "reject_reason"] == "").all()


def test_a_request_beyond_the_models_context_is_rejected_with_that_reason(tmp_path):
    config = load_model_config("llama-3.1-8b").to_dict()
    hf = {
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_hidden_layers": config["num_layers"],
        "num_attention_heads": config["num_heads"],
        "num_key_value_heads": config["num_kv_heads"],
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": 256,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf))
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,10\n0.5,300,10\n")
    result = simulate(SimConfig(trace=str(trace), model=str(path)))
    records = result.records.set_index("request_id")
    assert records.loc[0, "status"] == "finished"
    assert records.loc[1, "status"] == "rejected"
    assert records.loc[1, "reject_reason"] == "context_length"
    assert result.summary["slo_attainment"] <= 0.5


def test_sglang_serves_a_request_the_engine_accepts_when_its_reserve_does_not_fit(tmp_path):
    config = json.loads((CONFIGS / "llama-3.1-8b.json").read_text())
    config["max_position_embeddings"] = 2**20
    model = tmp_path / "long.json"
    model.write_text(json.dumps(config))
    latency = load_latency_model(load_model_config(str(model)), "h100", None)
    prompt = EngineConfig().kv_blocks(latency) * 16 - 6  # fills the cache with its 7 outputs
    trace = tmp_path / "one.csv"
    trace.write_text(f"num_prefill_tokens,num_decode_tokens\n{prompt},7\n")
    cfg = SimConfig(
        trace=str(trace),
        rate=1.0,
        model=str(model),
        policy="sglang",
        policy_args={"chunked_prefill_size": prompt + 100},
    )
    assert simulate(cfg).summary["finished"] == 1


def test_the_last_guard_refuses_times_that_go_backwards():
    records = pd.DataFrame(
        {
            "request_id": [0],
            "status": ["finished"],
            "arrival_s": [1.0],
            "first_token_s": [0.5],
            "finish_s": [2.0],
        }
    )
    with pytest.raises(SimulationError, match="request 0"):
        check_results(records, 2.0)
    with pytest.raises(SimulationError, match="no longer resolves"):
        check_results(records.iloc[:0], np.inf)


def test_validate_refuses_a_simulated_run_as_a_real_one(tmp_path):
    sim = tmp_path / "sim"
    made = runner.invoke(
        app,
        ["simulate", "--trace", "synthetic:n=4,rate=1", "--quiet", "--no-plots", "--out", str(sim)],
    )
    assert made.exit_code == 0, made.output
    for args in (
        ["validate", "--real-records", str(sim), "--out", str(tmp_path / "v")],
        ["profile", "--refine-from", str(sim), "--out", str(tmp_path / "p")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "simulated run" in result.output and str(sim) in result.output
    assert not (tmp_path / "v").exists() or not any((tmp_path / "v").iterdir())
