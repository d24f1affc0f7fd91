"""One simulation from a config: resolve the trace, policy and latency model, run, write."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import policies
import traces
from policies import Slo
from policies.prefix_cache import HASH_SOURCE_MOONCAKE, HASH_SOURCE_NONE, prefix_summary
from profiler.config import load_model_config
from profiler.model import LatencyModel
from twin.checks import check_results, check_sim_config, check_span
from twin.errors import TwinError
from twin.latency import load_latency_model
from twin.outputs.metrics import (
    keep_token_times,
    mean_decode_sms,
    records_frame,
    request_tokens,
    summarize,
)
from twin.outputs.paths import claim_out
from twin.outputs.writer import PLOT_FILES, RUN_FILES, RunOutputs
from twin.sim import EngineConfig, make_simulator


@dataclass
class SimConfig:
    trace: str = "azure-conv"
    format: str | None = None
    trace_tokenizer: str | None = None
    rate: float | None = None
    cv: float = 1.0
    rate_scale: float = 1.0
    start_s: float = 0.0
    duration_s: float | None = None
    max_requests: int | None = None
    seed: int = 0
    policy: str = "vllm"
    policy_args: dict[str, Any] = field(default_factory=dict)
    model: str = "llama-3.1-8b"
    gpu: str = "h100"
    stack: str = "vllm"
    latency: str = "measured"
    concurrency: int | None = None  # closed loop of N clients instead of the trace's arrivals
    profile: str | None = None
    slo: Slo = field(default_factory=Slo)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        check_sim_config(self)


@dataclass
class RunResult(RunOutputs):
    """A simulation's outputs and the latency model that timed it."""

    model: LatencyModel


def load_workload(cfg: SimConfig) -> traces.Workload:
    wl = traces.load(
        cfg.trace,
        format=cfg.format,
        rate=cfg.rate,
        cv=cfg.cv,
        seed=cfg.seed,
        tokenizer=cfg.trace_tokenizer,
    )
    if cfg.start_s or cfg.duration_s is not None:
        end = None if cfg.duration_s is None else cfg.start_s + cfg.duration_s
        wl = wl.window(cfg.start_s, end)
    if cfg.rate_scale != 1.0:
        wl = wl.scale_rate(cfg.rate_scale)
    if cfg.max_requests is not None:
        wl = wl.first(cfg.max_requests)
    if len(wl) == 0:
        raise TwinError(f"trace {cfg.trace!r} has no requests left after --duration/--max-requests")
    check_span(wl.duration_s(), cfg.trace)
    return wl


def hash_source(wl: traces.Workload) -> str:
    return HASH_SOURCE_NONE if wl.prefix_hashes is None else HASH_SOURCE_MOONCAKE


def simulate(
    cfg: SimConfig,
    progress: Callable[[int, int], None] | None = None,
    workload: traces.Workload | None = None,
    record_decisions: bool = False,
    latency_model: LatencyModel | None = None,
    token_times: bool | None = None,
) -> RunResult:
    """Run one simulation; ``workload`` and ``latency_model`` skip loading them again.
    ``token_times``: keep every token's time for records.parquet (None: for runs of up to
    ``TOKEN_TIMES_AUTO_MAX`` requests); the metrics are the same either way."""
    wl = workload if workload is not None else load_workload(cfg)
    model = latency_model or load_latency_model(
        load_model_config(cfg.model), cfg.gpu, cfg.profile, cfg.stack, cfg.latency
    )
    model_cfg = model.config
    policy = policies.get(cfg.policy, **cfg.policy_args)
    sim = make_simulator(
        wl,
        policy,
        model,
        cfg.slo,
        cfg.engine,
        progress,
        record_decisions,
        concurrency=cfg.concurrency,
    )
    kept = keep_token_times(token_times, len(wl))
    sim.keep_token_times = False  # the records' token times come from the token log
    wall = time.perf_counter()
    result = sim.run()
    wall = time.perf_counter() - wall
    tokens = request_tokens(result.requests, sim.tokens, cfg.slo.tbt_statistic)
    records = records_frame(result.requests, tokens, token_times=kept)
    check_results(records, result.end_s)
    summary = summarize(records, cfg.slo, tokens)
    summary.update(
        {
            "policy": cfg.policy,
            "trace": wl.name or cfg.trace,
            "latency_model": model.label,
            "gpus": getattr(policy, "gpus", 1),
            "goodput_per_gpu_rps": summary["goodput_rps"] / getattr(policy, "gpus", 1),
            "iterations": int(len(result.iterations["start_s"])),
            "partition_changes": result.partition_changes,
            "mean_decode_sms": mean_decode_sms(
                result.timeline["time_s"],
                result.timeline["mixed_sms"],
                result.timeline["decode_sms"],
            ),
            "kv_blocks": sim.kv.num_blocks,
            "retractions": summary["preemptions"] if getattr(policy, "retracts", False) else 0,
            **prefix_summary(sim.kv, policy, hash_source(wl)),
            "simulated_s": result.end_s,
            "wall_s": wall,
        }
    )
    resolved = {
        **dataclasses.asdict(cfg),
        "policy_params": policies.params_dict(policy),
        "model_config": model_cfg.to_dict(),
        "latency_model": model.describe(),
        "workload": {"name": wl.name, "source": wl.source, "requests": len(wl), **wl.notes},
        "token_times": kept,  # whether records.parquet holds every token's time
    }
    return RunResult(
        config=resolved,
        records=records,
        iterations=pd.DataFrame(result.iterations),
        timeline=pd.DataFrame(result.timeline),
        summary=summary,
        decisions=result.decisions,
        model=model,
        tokens=tokens,
    )


def run_files(with_plots: bool = True) -> tuple[str, ...]:
    """The files a run writes into its directory."""
    return RUN_FILES + (PLOT_FILES if with_plots else ())


def prepare_out(out: Path, force: bool = False, with_plots: bool = True) -> Path:
    """Create the output directory; refuse to replace any file a run writes unless forced."""
    return claim_out(out, run_files(with_plots), force, what="a run", create=False)


def write_run(result: RunResult, out: Path, with_plots: bool = True) -> list[Path]:
    title = f"{result.summary['policy']} on {result.summary['trace']}; {result.model.label}"
    return result.write(out, title, result.model.gpu.num_sms, with_plots)
