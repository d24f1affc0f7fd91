"""The runtime's steps of ``bench/gpu_campaign.py``: bench/runtime.py's roofline shares and
switch cost, a ``twin run --trace`` replay per policy and ``twin validate`` on the replays.

Each step frees what the sweeps held on the GPU first: the runtime sizes its KV cache from the
memory it finds free.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

from campaign_steps import Skipped, bench_runtime, write_json


def _runtime_args(c: Any) -> SimpleNamespace:
    return SimpleNamespace(model=c.model_arg, weights=None, device=c.device.type)


def step_runtime(c: Any, deadline: float) -> dict[str, Any]:
    """bench/runtime.py's decode share of the HBM roofline and prefill share of the GEMM peak."""
    c.release_measurement()
    if c.peaks is None:
        raise Skipped("needs the peaks step's copy bandwidth and GEMM peak")
    bench = bench_runtime()
    if c.dry_run:
        batches, contexts, sizes = [1, 4], [32], [16, 64]
    else:
        batches, contexts, sizes = [1, 32, 64, 128], [1024, 4096], [512, 2048, 8192]
    results = {"peaks": c.peaks}
    out: dict[str, Any] = {"decode": [], "prefill": []}
    try:
        out["decode"] = bench.measure_decode(_runtime_args(c), batches, contexts, results)
        out["prefill"] = bench.measure_prefill(_runtime_args(c), sizes, results)
    finally:
        write_json(c.out / "runtime.json", out)
    decode = [r for r in out["decode"] if "step_s" in r]
    big = [r["fraction_of_roofline"] for r in decode if r["batch"] >= (4 if c.dry_run else 32)]
    long = [r["fraction_of_gemm_peak"] for r in out["prefill"] if r["tokens"] >= max(sizes) / 4]
    return {
        "decode_fraction_of_roofline_min_at_large_batch": min(big) if big else None,
        "prefill_fraction_of_gemm_peak_min_at_long_prompts": min(long) if long else None,
        "decode_rows": len(decode),
        "prefill_rows": len(out["prefill"]),
    }


def step_switch(c: Any, deadline: float) -> dict[str, Any]:
    import torch

    if not c.cuda:
        raise Skipped("no CUDA GPU: no partitions to switch between")
    if c.info.backend == "none":
        raise Skipped("no green-context backend worked (see the partitions step)")
    c.release_measurement()
    result = bench_runtime().measure_switch(torch)
    write_json(c.out / "switch.json", result)
    if "skipped" in result:
        raise Skipped(result["skipped"])
    return {"switch_cost_us": 1e6 * result["switch_cost_s"], "pool_setup_s": result["setup_s"]}


def step_replay(c: Any, deadline: float) -> dict[str, Any]:
    """``twin run --trace`` with each policy, on the fitted profile when this run made one."""
    c.release_measurement()
    runs, results = c.out / "runs", {}
    for policy in c.policies:
        if time.monotonic() >= deadline:
            results[policy] = {"status": "out of time"}
            continue
        args = ["run", "--quiet", "--device", c.device.type, "--model", c.model_arg]
        args += ["--trace", c.trace, "--max-requests", str(c.max_requests)]
        args += ["--rate-scale", str(c.rate_scale), "--policy", policy]
        args += ["--out", str(runs / policy)]
        if c.profile_dir is not None:
            args += ["--profile", str(c.profile_dir)]
        try:
            c.twin(args)
        except Exception as exc:  # one policy failing must not cost the others their run
            results[policy] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            continue
        finally:
            c.free_gpu()  # the next policy's runtime sizes its KV cache from free memory
        s = json.loads((runs / policy / "summary.json").read_text())
        results[policy] = {
            k: s.get(k)
            for k in (
                "goodput_rps",
                "output_tokens_per_s",
                "ttft_p50_s",
                "ttft_p99_s",
                "tbt_p50_s",
                "tbt_p99_s",
                "iterations",
                "latency_model",
            )
        }
    base = results.get("vllm", {}).get("goodput_rps")
    for r in results.values():
        if base and r.get("goodput_rps") is not None:
            r["goodput_vs_vllm"] = r["goodput_rps"] / base
    c.replays = [p for p, r in results.items() if "goodput_rps" in r]
    write_json(c.out / "replay.json", results)
    if not c.replays:
        reasons = "; ".join(f"{p}: {r.get('reason', r.get('status'))}" for p, r in results.items())
        raise RuntimeError(f"no replay finished ({reasons})"[:500])
    return results


def step_validate(c: Any, deadline: float) -> dict[str, Any]:
    if not c.replays:
        raise Skipped("no replay finished in this run")
    args = ["validate", "--quiet", "--out", str(c.out / "validation")]
    for policy in c.replays:
        args += ["--real-records", str(c.out / "runs" / policy)]
    c.twin(args)
    report = json.loads((c.out / "validation" / "validation.json").read_text())
    out: dict[str, Any] = {"ranking_agrees": report.get("ranking", {}).get("agree")}
    for run in report["runs"]:
        metrics = run.get("metrics", {})
        out[run["policy"]] = {
            "iteration_mape": run.get("iteration_error", {}).get("mape"),
            "latency_model": run.get("latency_model"),
            **{
                f"{m}_error": metrics.get(m, {}).get("error")
                for m in ("ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s")
            },
        }
    return out
