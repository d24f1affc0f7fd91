"""``twin compare``: several policies over a range of request rates on one trace."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from twin.commands import options as opt
from twin.commands.console import console, friendly_errors
from twin.errors import TwinError
from twin.experiment import SimConfig
from twin.outputs.paths import claim_out, out_flag

ALL_POLICIES = "vllm,sglang,static-split,nexus,duetserve,disagg"
RESULTS = "compare.parquet"
FILES = (RESULTS, "compare.csv")
PLOT_FILES = ("latency_vs_load.png", "goodput.png", "partition_timeline.png")


@friendly_errors
def compare_command(
    trace: opt.Trace = "azure-conv",
    format: opt.TraceFormat = None,
    trace_tokenizer: opt.TraceTokenizer = None,
    policies: str = typer.Option(ALL_POLICIES, help="Comma-separated policy names."),
    rates: str = typer.Option(
        "1,2,3,4,5,6",
        help="Comma-separated rates: multipliers of a timestamped trace's own rate, or "
        "requests/s of Poisson arrivals for a length-only trace.",
    ),
    policy_arg: list[str] = typer.Option(
        [], "--policy-arg", help="policy.key=value for one policy (repeatable)."
    ),
    model: str = typer.Option("llama-3.1-8b", help="Bundled model name or HF config.json path."),
    gpu: opt.DatasheetGpu = "h100",
    stack: opt.Stack = "vllm",
    latency: opt.Latency = "measured",
    profile: opt.Profile = None,
    slo_ttft: opt.SloTtft = opt.DEFAULT_SLO.ttft_s,
    slo_tbt: opt.SloTbt = opt.DEFAULT_SLO.tbt_s,
    tbt_stat: opt.TbtStat = opt.DEFAULT_SLO.tbt_statistic,
    start: opt.WindowStart = 0.0,
    duration: opt.WindowLength = None,
    max_requests: int | None = typer.Option(
        None, help="Keep only the first N requests (length-only traces: 1000 by default)."
    ),
    seed: int = typer.Option(0, help="Seed for synthetic arrivals."),
    workers: int = typer.Option(0, help="Local worker processes (0: all cores; 1: in-process)."),
    ray: str | None = typer.Option(
        None, help="Run on Ray: 'auto' starts or joins a local runtime, or a cluster address."
    ),
    out: str = typer.Option(..., help="Output directory."),
    resume: bool = typer.Option(
        False, help="Continue an interrupted compare in --out: finished runs are not redone."
    ),
    force: bool = typer.Option(False, help="Discard an earlier compare in --out and start over."),
    plots: opt.Plots = True,
    quiet: bool = typer.Option(False, help="No progress bar or table."),
) -> None:
    """Sweep request rates for several policies; write compare.parquet/.csv and plots."""
    import policies as registry
    from twin import compare as cmp
    from twin.sweep import make_executor, run_sweep

    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names:
        raise TwinError("--policies is empty; e.g. --policies vllm,nexus")
    slo = opt.slo_from(slo_ttft, slo_tbt, tbt_stat)
    rate_values = cmp.parse_rates(rates)
    args = cmp.parse_policy_args(policy_arg, names)
    for name in names:
        registry.get(name, **args[name])  # unknown names and bad parameters fail before any work
    out_dir = out_flag(out)
    results = out_dir / RESULTS
    if results.exists() and not resume and not force:
        raise TwinError(
            f"--out {out} already holds a compare; --resume to continue it, --force to redo"
        )
    # Without --force every file twin writes must be new, so a user's own compare.csv or
    # plots are never replaced; a resumed compare continues over its own files.
    written_by_twin = FILES + PLOT_FILES if resume and results.exists() else ()
    claim_out(
        out_dir,
        FILES + (PLOT_FILES if plots else ()),
        force,
        "a compare",
        keep=written_by_twin,
        create=False,
    )
    out = out_dir
    base = SimConfig(
        trace=trace,
        format=format,
        trace_tokenizer=trace_tokenizer,
        start_s=start,
        duration_s=duration,
        max_requests=max_requests,
        seed=seed,
        model=model,
        gpu=gpu,
        stack=stack,
        latency=latency,
        profile=profile,
        slo=slo,
    )
    specs, mode, own_rate = cmp.build_specs(base, names, rate_values, args)
    out.mkdir(parents=True, exist_ok=True)
    if force and not resume:
        results.unlink(missing_ok=True)  # its own earlier results, redone from scratch
    executor = make_executor(workers, ray)
    wall = time.perf_counter()
    try:
        rows = run_sweep(specs, executor, results, progress=not quiet, label="comparing")
    finally:
        executor.close()
    wall = time.perf_counter() - wall
    table = cmp.results_table(rows, mode, own_rate, names)
    table.to_csv(out / "compare.csv", index=False)
    failed = int((rows["status"] != "ok").sum()) if "status" in rows else 0
    written = [out / "compare.parquet", out / "compare.csv"]
    if plots and not table.empty:
        title = f"{trace}: {', '.join(names)}; {model} on {gpu if not profile else profile}"
        written.append(cmp.latency_vs_load(table, mode, title, out / "latency_vs_load.png"))
        written.append(cmp.goodput_bars(table, mode, title, out / "goodput.png"))
        runs = cmp.timeline_runs(specs, table, mode)
        num_sms = next(iter(runs.values())).model.gpu.num_sms
        written.append(
            cmp.partition_timelines(runs, num_sms, title, out / "partition_timeline.png")
        )
    if not quiet:
        console.print(_table(table, mode))
        console.print(
            f"{len(specs)} simulations ({failed} failed) in {wall:.1f} s on "
            f"{getattr(executor, 'workers', 1)} worker(s); wrote {len(written)} files to {out}"
        )
    if mode == "poisson" and max_requests is None and not quiet:
        console.print(
            f"note: a length-only trace: each run replays its first {cmp.LENGTH_ONLY_REQUESTS} "
            "requests (twin simulate replays all of them unless --max-requests is given)",
            highlight=False,
        )
    if failed:
        raise TwinError(f"{failed} of {len(specs)} simulations failed; see the messages above")


def _table(table, mode: str) -> Table:
    unit = "x" if mode == "scale" else "req/s"
    t = Table(title="policies compared (rates in req/s)", header_style="bold")
    for col in (
        "policy",
        f"rate {unit}",
        "offered",
        "goodput",
        "thruput",
        "TTFT p90 s",
        "TBT p90 ms",
        "SLO met",
        "dec SMs",
    ):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for row in table.itertuples():
        t.add_row(
            row.policy,
            f"{row.rate:g}",
            f"{row.offered_rps:.2f}",
            f"{row.goodput_rps:.2f}",
            f"{row.throughput_rps:.2f}",
            f"{row.ttft_p90_s:.3f}",
            f"{row.tbt_p90_s * 1e3:.1f}",
            f"{row.slo_attainment:.0%}",
            f"{row.mean_decode_sms:.0f}",
        )
    return t
