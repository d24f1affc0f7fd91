"""Replay a trace through the real engine and write the same files as ``twin simulate``.

Each request gets random prompt token ids of the trace's prompt length and is forced to the
trace's output length (end-of-sequence ignored), so the engine does the trace's work. Arrivals
follow the trace on the wall clock, or on the virtual clock to line up with the simulator.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

import policies
from gpu_runtime.build import Runtime, warmup
from gpu_runtime.clock import VirtualClock
from gpu_runtime.jobs import Job
from gpu_runtime.loop import EngineLoop, run_virtual
from policies import Request
from traces import Workload
from twin.errors import TwinError
from twin.outputs.metrics import mean_decode_sms, records_frame, summarize
from twin.outputs.writer import RunOutputs


class ReplayResult(RunOutputs):
    """What a replay through the real engine produced."""


def make_jobs(workload: Workload, vocab_size: int, seed: int = 0) -> list[Job]:
    rng = np.random.default_rng(seed)
    jobs = []
    for i, (t, p, o) in enumerate(
        zip(workload.arrival_s, workload.prompt_tokens, workload.output_tokens, strict=True)
    ):
        ids = rng.integers(0, vocab_size, int(p)).tolist()
        req = Request(i, float(t), int(p), int(o), prompt_ids=ids)
        jobs.append(Job(req, ignore_eos=True))
    return jobs


def replay(
    rt: Runtime,
    workload: Workload,
    seed: int = 0,
    settings: dict | None = None,
    aborts: Mapping[int, float] | None = None,
) -> ReplayResult:
    """Run every request of ``workload``; ``settings`` (the run's options) go to config.json.

    ``aborts`` (request -> seconds its client goes away) replay on the virtual clock only.
    """
    engine = rt.engine
    jobs = make_jobs(workload, rt.config.vocab_size, seed)
    virtual = isinstance(engine.clock, VirtualClock)
    if aborts and not virtual:
        raise TwinError("aborts at given times replay only on the virtual clock")
    if not virtual:
        warmup(rt)
    wall = time.perf_counter()
    if virtual:
        run_virtual(engine, jobs, aborts)
    else:
        engine.clock.reset()
        EngineLoop(engine).replay(jobs)
    wall = time.perf_counter() - wall
    records = records_frame(engine.requests)
    summary = summarize(records, engine.slo)
    iterations = engine.iteration_table()
    timeline = engine.timeline_table()
    end = max((r.finish_s for r in engine.requests if r.finish_s == r.finish_s), default=0.0)
    summary.update(
        {
            "policy": engine.policy.name,
            "trace": workload.name or "workload",
            "engine": "runtime",
            "device": _device_name(rt),
            "clock": "virtual" if virtual else "wall",
            "latency_model": rt.latency.label,
            "iterations": int(len(iterations["start_s"])),
            "partition_changes": engine.stats.partition_changes,
            "mean_decode_sms": mean_decode_sms(
                timeline["time_s"], timeline["mixed_sms"], timeline["decode_sms"]
            ),
            "kv_blocks": engine.kv.num_blocks,
            "served_s": end,
            "wall_s": wall,
        }
    )
    config = {
        **(settings or {}),
        "policy": engine.policy.name,
        "policy_params": policies.params_dict(engine.policy),
        "slo": dataclasses.asdict(engine.slo),
        "model_config": rt.config.to_dict(),
        "runtime": dataclasses.asdict(rt.settings),
        "weights": rt.weights,
        "attention_backend": rt.runner.backend,
        "latency_model": rt.latency.describe(),
        "workload": {"name": workload.name, "source": workload.source, "requests": len(workload)},
    }
    return ReplayResult(
        config=config,
        records=records,
        iterations=pd.DataFrame(iterations),
        timeline=pd.DataFrame(timeline),
        summary=summary,
        decisions=engine.decisions,
    )


def write_replay(
    result: ReplayResult, out: Path, num_sms: int, with_plots: bool = True
) -> list[Path]:
    """records.parquet, iterations.parquet, summary.json, config.json and the two plots."""
    s = result.summary
    title = f"{s['policy']} on {s['trace']}; runtime on {s['device']} ({s['clock']} clock)"
    return result.write(out, title, num_sms, with_plots)


def _device_name(rt: Runtime) -> str:
    if rt.device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(rt.device)
    return "cpu"
