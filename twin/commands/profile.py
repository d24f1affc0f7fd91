"""``twin profile``: measure latency against SM partitions on a GPU, fit the curves, or refit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from twin.commands.console import console, friendly_errors, progress_bar
from twin.errors import TwinError
from twin.outputs.paths import claim_out, out_flag

DEFAULT_MODEL = "llama-3.1-8b"
NO_GPU_HINT = "`twin profile --fit-only DIR` refits a stored profile on any machine"


@friendly_errors
def profile_command(
    quick: bool = typer.Option(
        False, "--quick", help="Small grid: 7 SM counts, fewer shapes (minutes on an H100)."
    ),
    model: str | None = typer.Option(
        None, help=f"Bundled model name or HF config.json path [default: {DEFAULT_MODEL}]."
    ),
    out_text: str | None = typer.Option(
        None, "--out", help="Profile directory to write [default: profiles/<model>-<gpu>]."
    ),
    fit_only: Path | None = typer.Option(
        None,
        "--fit-only",
        metavar="DIR",
        help="Refit the samples stored in DIR (no GPU needed): rewrites fit.json and plots.",
    ),
    refine_from: list[Path] = typer.Option(
        [],
        "--refine-from",
        metavar="RUN",
        help="Calibrate the latency model from real iteration timings in a `twin run --trace` "
        "directory (repeatable); writes calibration.json into --out.",
    ),
    holdout: list[Path] = typer.Option(
        [], "--holdout", metavar="RUN", help="Real runs to report the calibrated error on."
    ),
    train_fraction: float = typer.Option(
        0.5, help="Without --holdout: fit on this first share of each run, test on the rest."
    ),
    mixed: Path | None = typer.Option(
        None,
        "--mixed",
        metavar="FILE",
        help="Mixed-batch sweep samples (CSV or parquet: prefill_tokens, prefix_tokens, "
        "n_decode, decode_context, seconds_mixed, seconds_prefill_alone, seconds_decode_alone) "
        "to fit the mixed-batch cost from [default: DIR/mixed_samples.parquet when present].",
    ),
    base_profile: str | None = typer.Option(
        None, "--profile", help="The model to calibrate (default: the one the real run used)."
    ),
    force: bool = typer.Option(False, help="Overwrite an existing profile in --out."),
    device: int = typer.Option(0, help="CUDA device index to profile."),
    plots: bool = typer.Option(True, help="Write PNG plots."),
    quiet: bool = typer.Option(False, help="No progress bar or summary table."),
) -> None:
    """Sweep operators over SM partitions on a GPU and fit the latency model's curves."""
    out = out_flag(out_text)
    if refine_from:
        if out is None:
            raise TwinError("--refine-from needs --out DIR for calibration.json")
        refine(refine_from, holdout, train_fraction, base_profile, out, force, quiet)
        return
    if fit_only is not None:
        if out is not None:
            raise TwinError("--out does not apply to --fit-only: the fit is written into DIR")
        refit(fit_only, model, plots, quiet, mixed)
        return
    measure(model or DEFAULT_MODEL, quick, out, force, device, plots, quiet, mixed)


def refine(
    runs: list[Path],
    holdout: list[Path],
    train_fraction: float,
    base_profile: str | None,
    out: Path,
    force: bool,
    quiet: bool,
) -> None:
    """Fit per-operator scales and an overhead to real iteration timings; report the error."""
    import os

    import pandas as pd

    from profiler.calibrate import CALIBRATION_FILE, CalibrationError, fit, split_by_time
    from profiler.config import load_model_config
    from twin.latency import load_latency_model
    from twin.validate import RealRun

    if (out / CALIBRATION_FILE).exists() and not force:
        raise TwinError(f"--out {out} already holds {CALIBRATION_FILE}; pick a new one or --force")
    reals = [RealRun.load(r, "--refine-from") for r in runs]
    held = [RealRun.load(r, "--holdout") for r in holdout]
    first = reals[0].config
    profile = base_profile if base_profile is not None else first.get("profile")
    gpu = first.get("gpu", "h100")
    stack, latency = first.get("stack", "vllm"), first.get("latency", "datasheet")
    base = load_latency_model(load_model_config(first["model"]), gpu, profile, stack, latency)
    if held:
        train = pd.concat([r.iterations for r in reals], ignore_index=True)
        test = pd.concat([r.iterations for r in held], ignore_index=True)
    else:
        try:
            parts = [split_by_time(r.iterations, train_fraction) for r in reals]
        except CalibrationError as exc:
            raise TwinError(f"--train-fraction: {exc}") from None
        train = pd.concat([a for a, _ in parts], ignore_index=True)
        test = pd.concat([b for _, b in parts], ignore_index=True)
    source = ", ".join(str(r.summary.get("device", "?")) for r in reals[:1])
    try:
        calibrated = fit(base, train, test, source=f"on {source}")
    except CalibrationError as exc:
        raise TwinError(f"--refine-from: {exc}") from None
    cal = calibrated.calibration
    cal.base_gpu, cal.base_stack, cal.base_latency = gpu, stack, latency
    if profile:
        out.mkdir(parents=True, exist_ok=True)
        cal.base_profile = os.path.relpath(Path(profile).resolve(), out.resolve())
    out.mkdir(parents=True, exist_ok=True)
    (out / CALIBRATION_FILE).write_text(cal.to_json())
    if not quiet:
        table = Table(title=f"calibration of {base.label}")
        for col in ("iterations", "MAPE before", "MAPE after", "p99 before", "p99 after"):
            table.add_column(col, justify="right")
        for part in ("train", "test"):
            before, after = cal.error.get(f"{part}_before"), cal.error.get(f"{part}_after")
            if before and after:
                table.add_row(
                    f"{part}: {before['iterations']}",
                    f"{before['mape']:.1%}",
                    f"{after['mape']:.1%}",
                    f"{before['p99']:.1%}",
                    f"{after['p99']:.1%}",
                )
        console.print(table)
        scales = ", ".join(f"{op} x{v:.3g}" for op, v in cal.scales.items())
        console.print(f"scales: {scales}; overhead {cal.overhead_s * 1e3:.2f} ms")
        console.print(f"wrote {out / CALIBRATION_FILE}; use it with --profile {out}")


def refit(
    directory: Path, model: str | None, plots: bool, quiet: bool, mixed: Path | None = None
) -> None:
    from profiler.config import load_model_config
    from profiler.profile_io import ProfileError, check_same_model, read_meta, read_samples

    if not directory.is_dir():
        raise ProfileError(f"--fit-only {directory}: no such profile directory")
    meta = read_meta(directory)
    if model is not None:
        check_same_model(meta["model_config"], load_model_config(model), directory)
    samples = read_samples(directory)
    finish(directory, samples, meta, plots, quiet, mixed)


def measure(
    model: str,
    quick: bool,
    out: Path | None,
    force: bool,
    device: int,
    plots: bool,
    quiet: bool,
    mixed: Path | None = None,
) -> None:
    from profiler.config import load_model_config
    from profiler.partition import PartitionError, probe
    from profiler.profile_io import read_meta, write_meta, write_samples
    from profiler.sweep import SweepError, gpu_sweep

    cfg = load_model_config(model)
    try:
        info = probe(device)
    except PartitionError as exc:
        raise TwinError(
            f"twin profile needs a CUDA GPU with green contexts (driver 12.4+): {exc}; "
            f"{NO_GPU_HINT}"
        ) from None
    out = out or Path("profiles") / f"{_slug(cfg.name)}-{_slug(info.name)}{'-quick' * quick}"
    _prepare(out, force, plots)
    with progress_bar(f"profiling {cfg.name} on {info.name}", enabled=not quiet) as update:
        try:
            samples, meta = gpu_sweep(cfg, quick=quick, device=device, progress=update)
        except (PartitionError, SweepError) as exc:
            raise TwinError(f"twin profile: {exc}") from None
    write_meta(out, meta)
    write_samples(out, samples)
    if meta["skipped"] and not quiet:
        console.print(f"{len(meta['skipped'])} samples failed and were skipped (see meta.json)")
    finish(out, samples, read_meta(out), plots, quiet, mixed)


def finish(
    directory: Path, samples: Any, meta: dict, plots: bool, quiet: bool, mixed: Path | None = None
) -> None:
    from profiler.fit import fit_profile
    from profiler.profile_io import write_fit

    with progress_bar("fitting curves", enabled=not quiet) as update:
        update(0, 1)
        fit = fit_profile(samples, meta)
        update(1, 1)
    mixed_fit = fit_mixed_cost(directory, fit, meta, mixed)
    if mixed_fit is not None:
        fit["mixed"] = mixed_fit
    write_fit(directory, fit)
    written = ["fit.json"]
    if plots:
        from profiler.plots import write_plots

        written += [p.name for p in write_plots(directory, samples, fit, meta)]
    if not quiet:
        console.print(fit_table(fit, meta))
        for line in fit_lines(fit):
            console.print(line, highlight=False)
        console.print(f"wrote {', '.join(written)} to {directory}")


def fit_mixed_cost(
    directory: Path, fit: dict[str, Any], meta: dict[str, Any], mixed: Path | None
) -> dict[str, Any] | None:
    """The mixed-batch cost fitted from ``mixed`` (or the profile's own mixed samples)."""
    from policies.partition import GpuSpec
    from profiler.fitted import FittedModel
    from profiler.mixed import MIXED_SAMPLES, fit_mixed, read_mixed_samples

    path = mixed if mixed is not None else directory / MIXED_SAMPLES
    if mixed is None and not path.is_file():
        return None
    samples = read_mixed_samples(path)
    gpu = GpuSpec(
        str(meta["device"]), meta["num_sms"], meta["sm_granularity"], meta["memory_bytes"]
    )
    model = FittedModel(gpu, meta["model_config"], fit, meta)
    return fit_mixed(samples, model, source=path.name).to_dict()


def fit_table(fit: dict[str, Any], meta: dict[str, Any]) -> Table:
    kind = "synthetic profile" if meta.get("synthetic") else "measured"
    table = Table(
        title=f"{meta['model_config'].name} on {meta['device']} ({kind}, {meta['date']})",
        title_justify="left",
        header_style="bold",
    )
    for col in ("operator class", "compute curve", "bandwidth curve", "CV MAPE", "samples"):
        table.add_column(col, justify="left" if col.endswith("class") else "right")
    for op, entry in fit["ops"].items():
        cv = entry.get("cv_mape")
        table.add_row(
            op,
            entry["compute"]["form"],
            entry["bandwidth"]["form"],
            "-" if cv is None else f"{100 * cv:.1f}%",
            str(entry.get("n", 0)),
        )
    return table


def fit_lines(fit: dict[str, Any]) -> list[str]:
    corun, over = fit.get("corun", {}), fit["overhead"]
    lines = [
        f"shared HBM bandwidth {fit['hbm_bandwidth'] / 1e12:.2f} TB/s "
        f"(copy {fit.get('copy_bandwidth', fit['hbm_bandwidth']) / 1e12:.2f} TB/s x co-run "
        f"scale {corun.get('scale', 1.0):.2f} from {corun.get('n', 0)} co-run samples)",
        f"per-iteration overhead: prefill {1e3 * over['prefill_s']:.2f} ms, "
        f"decode {1e3 * over['decode_s']:.2f} ms",
    ]
    mixed = fit.get("mixed")
    if mixed:
        lines.append(
            f"mixed-batch cost: decode attention x{1 + mixed['decode_attention_slowdown']:.2f} "
            f"in mixed batches ({mixed['samples']} samples; sum-of-parts error "
            f"{mixed['mape_sum_of_parts']:.1%} -> {mixed['mape_fitted']:.1%})"
        )
    sat = fit.get("summary", {}).get("saturation", {}).get("attn_decode_bandwidth_sms")
    if sat:
        lines.append(f"decode attention reaches 95% of its bandwidth at {sat} SMs")
    return lines


def _prepare(out: Path, force: bool, plots: bool = True) -> None:
    from profiler.plots import PLOT_FILES
    from profiler.profile_io import FIT, META, SAMPLES

    claim_out(out, (META, SAMPLES, FIT, *(PLOT_FILES if plots else ())), force, "a profile")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "gpu"
