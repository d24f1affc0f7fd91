"""``twin simulate``: replay a trace through a policy on the simulated GPU."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from policies import Slo
from twin.console import console, friendly_errors, progress_bar, summary_table
from twin.errors import TwinError
from twin.experiment import SimConfig, prepare_out, simulate, write_run
from twin.sim import EngineConfig


def parse_policy_args(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TwinError(f"--policy-arg {pair!r} must look like key=value")
        out[key.strip()] = value.strip()
    return out


def resolve_policy(
    policy: str | None, policy_config: Path | None, pairs: list[str]
) -> tuple[str, dict[str, object]]:
    """The policy and its parameters: --policy-config's, then --policy-arg on top."""
    name, params = policy, {}
    if policy_config is not None:
        try:
            data = json.loads(policy_config.read_text())
            config_name, config_params = data["policy"], dict(data.get("params", {}))
        except FileNotFoundError:
            raise TwinError(f"--policy-config {policy_config}: no such file") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TwinError(
                f"--policy-config {policy_config}: expected JSON like "
                '{"policy": "nexus", "params": {"hysteresis": 0.1}}'
            ) from None
        if name is not None and name != config_name:
            raise TwinError(
                f"--policy {name} differs from {config_name!r} in --policy-config {policy_config}"
            )
        name, params = config_name, config_params
    params.update(parse_policy_args(pairs))
    return name or "vllm", params


def default_out(trace: str, policy: str) -> Path:
    stem = Path(trace).stem if ("/" in trace or "." in trace) else trace
    base = Path("runs") / f"{stem}-{policy}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


@friendly_errors
def simulate_command(
    trace: str = typer.Option("azure-conv", help="Bundled trace name or a trace file path."),
    format: str | None = typer.Option(None, "--format", help="Force the trace format."),
    rate: float | None = typer.Option(
        None, help="Mean request rate (req/s); needed by length-only traces."
    ),
    cv: float = typer.Option(1.0, help="Arrival CV for synthetic arrivals (1 = Poisson)."),
    policy: str | None = typer.Option(
        None, help="Policy name (see `twin policies`) [default: vllm]."
    ),
    policy_arg: list[str] = typer.Option(
        [], "--policy-arg", help="Policy parameter key=value (repeatable)."
    ),
    policy_config: Path | None = typer.Option(
        None, help="JSON with the policy and its parameters (e.g. from a policy search)."
    ),
    model: str = typer.Option("llama-3.1-8b", help="Bundled model name or HF config.json path."),
    gpu: str = typer.Option("h100", help="Datasheet GPU model, used when no --profile is given."),
    profile: str | None = typer.Option(
        None, help="Measured profile directory (from `twin profile`)."
    ),
    rate_scale: float = typer.Option(1.0, help="Multiply the trace's request rate."),
    start: float = typer.Option(0.0, help="Start of the trace window (s)."),
    duration: float | None = typer.Option(None, help="Length of the trace window (s)."),
    max_requests: int | None = typer.Option(None, help="Keep only the first N requests."),
    seed: int = typer.Option(0, help="Seed for synthetic arrivals and sampling."),
    slo_ttft: float = typer.Option(Slo().ttft_s, help="TTFT SLO (s)."),
    slo_tbt: float = typer.Option(Slo().tbt_s, help="TBT SLO (s)."),
    tbt_stat: str = typer.Option(
        Slo().tbt_statistic,
        help="Per-request TBT statistic checked against the SLO: mean, p90, p99 or max.",
    ),
    out: Path | None = typer.Option(
        None, help="Output directory (default: runs/<trace>-<policy>)."
    ),
    force: bool = typer.Option(False, help="Overwrite an earlier run in --out."),
    plots: bool = typer.Option(True, help="Write PNG plots."),
    fast_forward: bool = typer.Option(True, help="Advance steady decode iterations in one event."),
    quiet: bool = typer.Option(False, help="No progress bar or table."),
) -> None:
    """Replay a trace through a policy on the simulated GPU; write records, summary and plots."""
    if tbt_stat not in ("mean", "p90", "p99", "max"):
        raise TwinError(f"--tbt-stat {tbt_stat!r}: use mean, p90, p99 or max")
    policy, policy_args = resolve_policy(policy, policy_config, policy_arg)
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
        policy_args=policy_args,
        model=model,
        gpu=gpu,
        profile=profile,
        slo=Slo(slo_ttft, slo_tbt, tbt_stat),
        engine=EngineConfig(fast_forward=fast_forward),
    )
    out_dir = prepare_out(out or default_out(trace, policy), force)
    with progress_bar(f"simulating {policy}", enabled=not quiet) as update:
        result = simulate(cfg, progress=update)
    written = write_run(result, out_dir, with_plots=plots)
    if not quiet:
        s = result.summary
        console.print(summary_table(s, f"{policy} on {s['trace']} ({s['latency_model']})"))
        console.print(
            f"simulated {s['requests']} requests ({s['simulated_s']:.0f} s of serving) "
            f"in {s['wall_s']:.2f} s; wrote {len(written)} files to {out_dir}"
        )
