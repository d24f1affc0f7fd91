"""``twin simulate``: replay a trace through a policy on the simulated GPU."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from twin.commands import options as opt
from twin.commands.console import console, friendly_errors, progress_bar, summary_table
from twin.compare import LENGTH_ONLY_REQUESTS
from twin.errors import TwinError
from twin.experiment import SimConfig, prepare_out, simulate, write_run
from twin.outputs.paths import out_flag
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
        except IsADirectoryError:
            raise TwinError(
                f"--policy-config {policy_config} is a directory; give the JSON file"
            ) from None
        except OSError as exc:
            raise TwinError(f"--policy-config {policy_config}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise TwinError(
                f"--policy-config {policy_config}: expected JSON like "
                '{"policy": "nexus", "params": {"hysteresis": 0.1}}'
            ) from None
        if not isinstance(config_name, str):
            raise TwinError(f'--policy-config {policy_config}: "policy" must be a policy name')
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
    trace: opt.Trace = "azure-conv",
    format: opt.TraceFormat = None,
    trace_tokenizer: opt.TraceTokenizer = None,
    rate: opt.Rate = None,
    cv: opt.ArrivalCv = 1.0,
    policy: opt.PolicyName = None,
    policy_arg: opt.PolicyArgs = [],  # noqa: B006 (typer copies option defaults)
    policy_config: opt.PolicyConfig = None,
    model: str = typer.Option("llama-3.1-8b", help="Bundled model name or HF config.json path."),
    gpu: opt.DatasheetGpu = "h100",
    stack: opt.Stack = "vllm",
    latency: opt.Latency = "measured",
    profile: opt.Profile = None,
    rate_scale: opt.RateScale = 1.0,
    start: opt.WindowStart = 0.0,
    duration: opt.WindowLength = None,
    max_requests: opt.MaxRequests = None,
    concurrency: opt.Concurrency = None,
    seed: int = typer.Option(0, help="Seed for synthetic arrivals and sampling."),
    slo_ttft: opt.SloTtft = opt.DEFAULT_SLO.ttft_s,
    slo_tbt: opt.SloTbt = opt.DEFAULT_SLO.tbt_s,
    tbt_stat: opt.TbtStat = opt.DEFAULT_SLO.tbt_statistic,
    out: str | None = typer.Option(None, help="Output directory (default: runs/<trace>-<policy>)."),
    force: opt.Force = False,
    plots: opt.Plots = True,
    token_times: opt.TokenTimes = None,
    fast_forward: bool = typer.Option(True, help="Advance steady decode iterations in one event."),
    quiet: bool = typer.Option(False, help="No progress bar or table."),
) -> None:
    """Replay a trace through a policy on the simulated GPU; write records, summary and plots."""
    out_dir = out_flag(out)
    slo = opt.slo_from(slo_ttft, slo_tbt, tbt_stat)
    policy, policy_args = resolve_policy(policy, policy_config, policy_arg)
    cfg = SimConfig(
        trace=trace,
        format=format,
        trace_tokenizer=trace_tokenizer,
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
        stack=stack,
        latency=latency,
        concurrency=concurrency,
        profile=profile,
        slo=slo,
        engine=EngineConfig(fast_forward=fast_forward),
    )
    out_dir = prepare_out(out_dir or default_out(trace, policy), force, with_plots=plots)
    with progress_bar(f"simulating {policy}", enabled=not quiet) as update:
        result = simulate(cfg, progress=update, token_times=token_times)
    written = write_run(result, out_dir, with_plots=plots)
    if not quiet:
        s = result.summary
        console.print(summary_table(s, f"{policy} on {s['trace']} ({s['latency_model']})"))
        console.print(
            f"simulated {s['requests']} requests ({s['simulated_s']:.0f} s of serving) "
            f"in {s['wall_s']:.2f} s; wrote {len(written)} files to {out_dir}"
        )
        workload = result.config["workload"]
        if "arrivals" in workload and max_requests is None:
            console.print(
                f"note: all {workload['requests']} requests of this length-only trace were "
                f"replayed; twin compare keeps the first {LENGTH_ONLY_REQUESTS} unless "
                "--max-requests is given",
                highlight=False,
            )
