"""``twin validate``: the simulator against the real engine on the same trace and policy."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from twin.commands.console import console, friendly_errors
from twin.errors import TwinError
from twin.experiment import prepare_out
from twin.outputs.paths import claim_out, out_flag


@friendly_errors
def validate_command(
    real_records: list[Path] = typer.Option(
        [],
        "--real-records",
        help="A directory `twin run --trace` wrote (repeatable: one per policy).",
    ),
    trace: str | None = typer.Option(
        None, help="Run the real engine on this trace first (with --policy)."
    ),
    policy: list[str] = typer.Option(
        [], "--policy", help="Policy for the real run (repeatable; needs --trace)."
    ),
    model: str = typer.Option("llama-3.1-8b", help="Model for the real run."),
    device: str = typer.Option("auto", help="Device for the real run: auto, cpu or cuda."),
    max_requests: int | None = typer.Option(None, help="Real run: first N requests."),
    rate_scale: float = typer.Option(1.0, help="Real run: multiply the trace's rate."),
    rate: float | None = typer.Option(None, help="Real run: rate of a length-only trace."),
    kv_blocks: int | None = typer.Option(None, help="Real run: KV cache blocks."),
    seed: int = typer.Option(0, help="Seed of the real run and the simulation."),
    profile: str | None = typer.Option(
        None, help="Latency model to validate (default: the one the real run used)."
    ),
    out: str = typer.Option(..., help="Output directory for validation.json and plots."),
    force: bool = typer.Option(False, help="Overwrite an earlier validation in --out."),
    plots: bool = typer.Option(True, help="Write PNG plots."),
    quiet: bool = typer.Option(False, help="No tables."),
) -> None:
    """Replay the real runs in the simulator and report how far apart they are."""
    from twin.outputs import plots as figures
    from twin.validate import summary_rows, validate

    own = ["validation.json"] + [f"real-{p}" for p in policy]
    if plots:
        own += [f"plots-{p}" for p in policy]
    out_dir = claim_out(out_flag(out), own, force, "a validation")
    out = out_dir
    dirs = list(real_records)
    if trace is not None:
        if not policy:
            raise TwinError("--trace needs at least one --policy for the real run")
        dirs += _real_runs(
            trace, policy, model, device, max_requests, rate_scale, rate, kv_blocks, seed, out
        )
    elif policy:
        raise TwinError("--policy applies to the real run: give --trace as well")
    if not dirs:
        raise TwinError("give --real-records DIR (from `twin run --trace`) or --trace and --policy")
    result = validate(dirs, profile)
    if plots:
        claim_out(out, [f"plots-{r['policy']}" for r in result.reports], force, "a validation")
    (out / "validation.json").write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    if plots:
        for (real, sim), report in zip(result.runs, result.reports, strict=True):
            sub = out / f"plots-{report['policy']}"
            sub.mkdir(exist_ok=True)
            title = f"{report['policy']}: {report['latency_model']}"
            figures.validation_figures(
                real.iterations,
                real.records,
                sim.records,
                sim.model,
                sim_slo(sim),
                title,
                sub,
                sim.tokens,
            )
    if not quiet:
        for report in result.reports:
            table = Table(title=f"{report['policy']} ({report['latency_model']})")
            for col in ("metric", "real", "simulated", "error"):
                table.add_column(col, justify="left" if col == "metric" else "right")
            for row in summary_rows(report):
                table.add_row(*row)
            console.print(table)
        if result.ranking:
            r = result.ranking
            verdict = "agree" if r["agree"] else "DISAGREE"
            console.print(
                f"ranking by {r['by']}: real {r['real']}, simulated {r['sim']}: {verdict}"
            )
        console.print(f"wrote {out / 'validation.json'}")


def sim_slo(sim):
    from policies import Slo

    return Slo(**sim.config["slo"])


def _real_runs(trace, policies_, model, device, max_requests, rate_scale, rate, kv, seed, out):
    """Replay the trace through the real engine once per policy; returns the run directories."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise TwinError(
            "running the real engine needs PyTorch (the 'runtime' extra); or pass --real-records"
        ) from None
    from gpu_runtime.build import build_runtime
    from gpu_runtime.config import RuntimeConfig
    from gpu_runtime.replay import replay, write_replay
    from twin.experiment import SimConfig, load_workload

    dirs = []
    for name in policies_:
        cfg = SimConfig(
            trace=trace,
            rate=rate,
            rate_scale=rate_scale,
            max_requests=max_requests,
            seed=seed,
            policy=name,
        )
        workload = load_workload(cfg)
        settings = RuntimeConfig(device=device, seed=seed, num_kv_blocks=kv)
        rt = build_runtime(model, settings=settings, policy=name, random_weights=True)
        options = {
            "model": model,
            "trace": trace,
            "rate": rate,
            "rate_scale": rate_scale,
            "max_requests": max_requests,
            "seed": seed,
            "gpu": "h100",
            "profile": None,
        }
        with console.status(f"real engine: {name} on {trace}"):
            result = replay(rt, workload, seed, options)
        run_dir = prepare_out(out / f"real-{name}", force=True)
        write_replay(result, run_dir, rt.latency.gpu.num_sms, with_plots=False)
        dirs.append(run_dir)
    return dirs
