"""``twin run``: the real engine. Serves the OpenAI API, or replays a trace with ``--trace``."""

from __future__ import annotations

from pathlib import Path

import typer

from twin.commands import options as opt
from twin.commands.console import console, friendly_errors, summary_table
from twin.commands.simulate import default_out, resolve_policy
from twin.errors import TwinError
from twin.experiment import SimConfig, load_workload, prepare_out


@friendly_errors
def run_command(
    model: str = typer.Option(
        "llama-3.1-8b", help="Bundled model name, a HF config.json, or a model directory."
    ),
    weights: str | None = typer.Option(
        None, help="Local safetensors directory (default: --model's directory if it has them)."
    ),
    random_weights: bool = typer.Option(False, help="Use seeded random weights even if found."),
    tokenizer: str | None = typer.Option(
        None, help="Directory with tokenizer.json (default: a byte-level tokenizer)."
    ),
    policy: opt.PolicyName = None,
    policy_config: opt.PolicyConfig = None,
    policy_arg: opt.PolicyArgs = [],  # noqa: B006 (typer copies option defaults)
    host: str = typer.Option("127.0.0.1", help="Address to serve on."),
    port: int = typer.Option(8000, help="Port to serve on."),
    max_queue: int = typer.Option(256, help="Requests waiting to start before answering 429."),
    served_model_name: str | None = typer.Option(None, help="Model name in the API."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    dtype: str = typer.Option("auto", help="auto (bf16 on cuda, fp32 on cpu), bfloat16, ..."),
    kv_blocks: int | None = typer.Option(None, help="KV cache blocks (default: from memory)."),
    block_size: int = typer.Option(16, help="Tokens per KV block."),
    max_model_len: int | None = typer.Option(None, help="Prompt + output limit per request."),
    gpu_memory_utilization: float = typer.Option(0.9, help="Share of GPU memory to use."),
    attention: str = typer.Option("auto", help="auto, torch, triton or flash."),
    cuda_graphs: bool = typer.Option(True, help="Capture decode steps as CUDA graphs."),
    seed: int = typer.Option(0, help="Seed for random weights, prompts and sampling."),
    gpu: opt.DatasheetGpu = "h100",
    profile: opt.Profile = None,
    slo_ttft: opt.SloTtft = opt.DEFAULT_SLO.ttft_s,
    slo_tbt: opt.SloTbt = opt.DEFAULT_SLO.tbt_s,
    tbt_stat: opt.TbtStat = opt.DEFAULT_SLO.tbt_statistic,
    trace: str | None = typer.Option(None, help="Replay this trace instead of serving."),
    format: opt.TraceFormat = None,
    rate: opt.Rate = None,
    cv: opt.ArrivalCv = 1.0,
    rate_scale: opt.RateScale = 1.0,
    start: opt.WindowStart = 0.0,
    duration: opt.WindowLength = None,
    max_requests: opt.MaxRequests = None,
    clock: str = typer.Option(
        "wall", help="wall (real arrivals) or virtual (the latency model's time, as simulated)."
    ),
    out: Path | None = typer.Option(None, help="Output directory for --trace."),
    force: opt.Force = False,
    plots: opt.Plots = True,
    quiet: bool = typer.Option(False, help="No table at the end of a replay."),
) -> None:
    """Run the real engine: serve the OpenAI API, or replay --trace and write the run files."""
    from gpu_runtime.config import RuntimeConfig

    slo = opt.slo_from(slo_ttft, slo_tbt, tbt_stat)
    if clock not in ("wall", "virtual"):
        raise TwinError(f"--clock {clock!r}: use wall or virtual")
    if max_queue < 1:
        raise TwinError("--max-queue must be at least 1")
    policy, policy_args = resolve_policy(policy, policy_config, policy_arg)
    settings = RuntimeConfig(
        device=device,
        dtype=dtype,
        seed=seed,
        weights=weights,
        block_size=block_size,
        num_kv_blocks=kv_blocks,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        attention=attention,
        cuda_graphs=cuda_graphs,
    )
    common = dict(
        settings=settings,
        policy=policy,
        policy_args=policy_args,
        slo=slo,
        gpu=gpu,
        profile=profile,
        random_weights=random_weights,
    )
    if trace is None:
        if clock == "virtual":
            raise TwinError("--clock virtual only applies to --trace replays")
        _serve(model, common, tokenizer, host, port, max_queue, served_model_name)
        return
    cfg = SimConfig(
        trace=trace,
        format=format,
        rate=rate,
        cv=cv,
        rate_scale=rate_scale,
        start_s=start,
        duration_s=duration,
        max_requests=max_requests,
        seed=seed,
        policy=policy,
    )
    workload = load_workload(cfg)
    out_dir = prepare_out(out or default_out(trace, f"{policy}-runtime"), force)
    _replay(model, common, workload, cfg, clock, out_dir, plots, quiet)


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise TwinError(
            "twin run needs PyTorch (pip install torch, or the package's 'runtime' extra)"
        ) from None


def _replay(model, common, workload, cfg: SimConfig, clock, out_dir, plots, quiet) -> None:
    _need_torch()
    from gpu_runtime.build import build_runtime
    from gpu_runtime.replay import replay, write_replay

    rt = build_runtime(model, virtual_clock=clock == "virtual", **common)
    options = {
        "model": model,
        "trace": cfg.trace,
        "format": cfg.format,
        "rate": cfg.rate,
        "cv": cfg.cv,
        "rate_scale": cfg.rate_scale,
        "start_s": cfg.start_s,
        "duration_s": cfg.duration_s,
        "max_requests": cfg.max_requests,
        "seed": cfg.seed,
        "clock": clock,
        "gpu": common["gpu"],
        "profile": common["profile"],
    }
    result = replay(rt, workload, cfg.seed, options)
    written = write_replay(result, out_dir, rt.latency.gpu.num_sms, with_plots=plots)
    if not quiet:
        s = result.summary
        console.print(summary_table(s, f"{s['policy']} on {s['trace']} (runtime, {s['device']})"))
        console.print(
            f"served {s['requests']} requests in {s['wall_s']:.1f} s of wall time "
            f"({s['clock']} clock); wrote {len(written)} files to {out_dir}"
        )


def _serve(model, common, tokenizer, host, port, max_queue, served_model_name) -> None:
    try:
        import uvicorn
    except ImportError:
        raise TwinError("serving needs uvicorn and fastapi (pip install uvicorn fastapi)") from None
    _need_torch()
    from gpu_runtime.build import build_runtime, warmup
    from gpu_runtime.server import create_app
    from gpu_runtime.serving import ServingEngine
    from gpu_runtime.tokenizer import load_tokenizer

    rt = build_runtime(model, **common)
    tok = load_tokenizer(tokenizer, rt.config.vocab_size)
    warmup(rt)
    name = served_model_name or rt.config.name
    serving = ServingEngine(rt.engine, tok, name, rt.config.vocab_size, max_queue)
    console.print(
        f"serving {name} ({rt.weights} weights, {rt.device}, policy {common['policy']}, "
        f"{rt.engine.kv.num_blocks} KV blocks) on http://{host}:{port}/v1",
        soft_wrap=True,
    )
    uvicorn.run(create_app(serving), host=host, port=port, log_level="info")
