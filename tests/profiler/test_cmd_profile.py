import json
import os

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from profiler.profile_io import FIT, SAMPLES
from twin.commands.profile import profile_command

app = typer.Typer()
app.command("profile")(profile_command)


@app.callback()
def _root() -> None:
    """A stand-in root so ``profile`` is a subcommand, as in the real CLI."""


runner = CliRunner()
PLOTS = (
    "latency_vs_sms.png",
    "bandwidth_vs_sms.png",
    "predicted_vs_measured.png",
    "corun_slowdown.png",
)


def profile(*args: str):
    return runner.invoke(app, ["profile", *args])


def test_fit_only_refits_a_stored_profile_and_keeps_its_samples(profile_copy):
    (profile_copy / FIT).unlink()
    samples = profile_copy / SAMPLES
    before = samples.read_bytes(), os.stat(samples).st_mtime_ns
    result = profile("--fit-only", str(profile_copy))
    assert result.exit_code == 0, result.output
    fit = json.loads((profile_copy / FIT).read_text())
    assert set(fit["ops"]) == {"gemm", "attn_prefill", "attn_decode", "other"}
    for name in PLOTS:
        assert (profile_copy / name).stat().st_size > 10_000, name
    assert (samples.read_bytes(), os.stat(samples).st_mtime_ns) == before
    assert "CV MAPE" in result.output and "saturating" in result.output


def test_fit_only_quiet_without_plots_writes_only_the_fit(profile_copy):
    for name in PLOTS:
        (profile_copy / name).unlink(missing_ok=True)
    result = profile("--fit-only", str(profile_copy), "--quiet", "--no-plots")
    assert result.exit_code == 0 and result.output == ""
    assert not any((profile_copy / name).exists() for name in PLOTS)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("nowhere", "no such profile directory"),
        ("nan", "NaN"),
        ("model", "differs from the requested 'qwen3-8b'"),
        ("out", "--out does not apply to --fit-only"),
    ],
)
def test_fit_only_reports_bad_input_in_one_line(profile_copy, damage, message):
    args = ["--fit-only", str(profile_copy)]
    if damage == "nowhere":
        args = ["--fit-only", str(profile_copy / "nowhere")]
    elif damage == "nan":
        df = pd.read_parquet(profile_copy / SAMPLES)
        df.loc[0, "bytes"] = np.nan
        df.to_parquet(profile_copy / SAMPLES)
    elif damage == "model":
        args += ["--model", "qwen3-8b"]
    elif damage == "out":
        args += ["--out", str(profile_copy)]
    result = profile(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("error:")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="checks the message on a machine without a GPU")
def test_profile_without_a_gpu_says_what_is_needed_in_one_line(tmp_path):
    result = profile("--quick", "--out", str(tmp_path / "p"))
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "CUDA GPU with green contexts" in text and "--fit-only" in text
    assert "Traceback" not in result.output
    assert not (tmp_path / "p").exists()


def test_profile_rejects_an_unknown_model_before_touching_the_gpu():
    result = profile("--model", "no-such-model")
    assert result.exit_code == 2 and "neither a bundled config" in result.output


def test_an_existing_profile_is_not_overwritten_without_force(profile_copy):
    from twin.commands.profile import _prepare
    from twin.errors import TwinError

    with pytest.raises(TwinError, match="already holds a profile .* --force"):
        _prepare(profile_copy, force=False)
    _prepare(profile_copy, force=True)
    _prepare(profile_copy / "fresh", force=False)
    assert (profile_copy / "fresh").is_dir()
