"""``bench/gpu_campaign.py --dry-run``: the GPU campaign's whole code path on a CPU, so the
script cannot rot between the rare runs on a GPU. Times measured here mean nothing; the tests
check what each step leaves behind."""

import importlib.util
import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")

from profiler.mixed_sweep import MIXED  # noqa: E402
from profiler.profile_io import MIXED_COLUMNS, read_fit, read_samples  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_campaign.py"
GPU_ONLY = ("partitions", "corun", "switch")


def campaign_module():
    spec = importlib.util.spec_from_file_location("gpu_campaign", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("campaign")
    out, pack = tmp / "campaign", tmp / "campaign.tar.gz"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--pack", str(pack)],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, pack, done.stdout


def test_every_step_runs_or_says_why_not(dry_run):
    out, _, stdout = dry_run
    summary = json.loads((out / "summary.json").read_text())
    statuses = {name: s["status"] for name, s in summary["steps"].items()}
    assert list(statuses) == list(campaign_module().STEPS)
    for name, status in statuses.items():
        assert status == ("skipped" if name in GPU_ONLY else "ok"), (name, summary["steps"][name])
    for name in GPU_ONLY:
        assert "CUDA" in summary["steps"][name]["reason"]
    assert summary["meta"]["device"] == "cpu" and summary["meta"]["torch"]
    assert "CPU dry run" in stdout and "meaningless" in stdout
    figures = {f["figure"] for f in summary["figures"]}
    assert "goodput of nexus" in figures and "copy bandwidth (read + write)" in figures


def test_the_profile_holds_sweep_and_mixed_samples_and_fits(dry_run):
    out, _, _ = dry_run
    samples = read_samples(out / "profile")
    assert {"peak", "copy", "iteration", "gemm", "attn_prefill", "attn_decode", "other"} <= set(
        samples["op_class"]
    )
    mixed = samples[samples["op_class"] == MIXED]
    assert len(mixed) == 2 and set(MIXED_COLUMNS) <= set(samples.columns)
    assert (mixed["seconds_mixed"] == mixed["median_s"]).all()
    assert (mixed[["seconds_prefill_alone", "seconds_decode_alone"]] > 0).all().all()
    assert (mixed["prefill_tokens"] == mixed["chunk"]).all()
    assert (mixed["n_decode"] == mixed["batch"]).all() and (mixed["n_decode"] > 0).all()
    others = samples[samples["op_class"] != MIXED]
    assert (others[list(MIXED_COLUMNS)] == 0).all().all()
    fit = read_fit(out / "profile")
    assert set(fit["ops"]) == {"gemm", "attn_prefill", "attn_decode", "other"}
    meta = json.loads((out / "profile" / "meta.json").read_text())
    assert meta["dry_run"] is True and meta["measured_by"] == "bench/gpu_campaign.py"
    for plot in ("latency_vs_sms.png", "mixed_vs_parts.png"):
        assert (out / "profile" / plot).stat().st_size > 0


def test_replays_and_validation_of_each_policy(dry_run):
    out, _, _ = dry_run
    replay = json.loads((out / "replay.json").read_text())
    assert list(replay) == ["vllm", "static-split", "nexus", "duetserve"]
    # Goodput on a loaded CPU may be 0 (SLOs missed); the ratio exists only against a base.
    if replay["vllm"]["goodput_rps"] > 0:
        assert replay["vllm"]["goodput_vs_vllm"] == 1.0
    for policy in replay:
        assert replay[policy]["output_tokens_per_s"] > 0
        records = pd.read_parquet(out / "runs" / policy / "records.parquet")
        assert len(records) == 6 and (records["status"] == "finished").all()
    report = json.loads((out / "validation" / "validation.json").read_text())
    assert [r["policy"] for r in report["runs"]] == list(replay)
    runtime = json.loads((out / "runtime.json").read_text())
    assert all(r["fraction_of_roofline"] > 0 for r in runtime["decode"])
    assert all(r["fraction_of_gemm_peak"] > 0 for r in runtime["prefill"])


def test_the_pack_holds_the_whole_directory_within_the_transfer_limit(dry_run):
    out, pack, _ = dry_run
    assert pack.stat().st_size < 16 * 2**20
    with tarfile.open(pack) as tar:
        names = set(tar.getnames())
    for path in ("summary.json", "profile/samples.parquet", "profile/fit.json", "replay.json"):
        assert f"{out.name}/{path}" in names


def test_a_step_past_its_budget_keeps_what_it_measured(tmp_path):
    # How much of the sweep fits a budget depends on the machine and on how warm torch is:
    # widen it until the cut lands inside the sweep (some rows measured, not all), then
    # check what was kept.
    for attempt, budget in enumerate((0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)):
        out = tmp_path / f"cut{attempt}"
        code = campaign_module().main(
            ["--dry-run", "--out", str(out), "--steps", "sweep", "--budget", f"sweep={budget}"]
        )
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        assert list(summary["steps"]) == ["meta", "peaks", "partitions", "sweep"]
        sweep = summary["steps"]["sweep"]["result"]
        if 0 < sweep["measured"] < sweep["planned"]:
            break
    assert sweep["cut_short"] and 0 < sweep["measured"] < sweep["planned"]
    assert len(read_samples(out / "profile")) == sweep["measured"]


def test_a_block_past_its_time_limit_is_interrupted():
    module = campaign_module()
    started = time.monotonic()
    with pytest.raises(module.StepTimeout):
        with module.time_limit(0.05):
            time.sleep(2)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "sweep,bogus"], "--steps: unknown ['bogus']"),
        (["--budget", "sweep=-1"], "--budget sweep=-1"),
        (["--budget", "sweep=nan"], "--budget sweep=nan"),
        (["--total-s", "inf"], "--total-s inf"),
        (["--use-profile", "no-such-dir"], "--use-profile no-such-dir: no fit.json there"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    code = campaign_module().main(["--dry-run", "--out", str(tmp_path / "x"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_without_a_gpu_only_the_dry_run_runs(tmp_path, capsys):
    if campaign_module()._cuda_visible():
        pytest.skip("a CUDA GPU is visible")
    assert campaign_module().main(["--out", str(tmp_path / "real")]) == 2
    assert "--dry-run" in capsys.readouterr().err and not (tmp_path / "real").exists()


def test_an_earlier_campaign_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert campaign_module().main(["--dry-run", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == "{}"


def test_the_pack_installs_once_where_the_repository_keeps_it(dry_run, tmp_path, capsys):
    _, pack, _ = dry_run
    spec = importlib.util.spec_from_file_location("install", ROOT / "bench/install_campaign.py")
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    assert install.main([str(pack), "--root", str(tmp_path)]) == 1
    assert "dry run" in capsys.readouterr().err and not any(tmp_path.iterdir())
    assert install.main([str(pack), "--root", str(tmp_path), "--allow-dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "Measured on cpu" in printed and "corun skipped" in printed
    profile = next((tmp_path / "profiler" / "profiles" / "cpu").iterdir())
    assert read_fit(profile)["ops"] and len(read_samples(profile)) > 0
    results = next((tmp_path / "bench" / "results").iterdir())
    validation = (results / "validation" / "validation.json").read_text()
    assert '"real_run": "runs/vllm"' in validation and str(tmp_path.parent) not in validation
    assert install.main([str(pack), "--root", str(tmp_path), "--allow-dry-run"]) == 1
    assert "nothing is overwritten" in capsys.readouterr().err


def test_a_terminated_run_packs_what_it_measured(tmp_path):
    out, pack = tmp_path / "term", tmp_path / "term.tar.gz"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--pack", str(pack)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    for line in proc.stdout:  # the sweep starts now: stop the run inside it
        if line.startswith("[partitions]"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, rest
    summary = json.loads((out / "summary.json").read_text())
    statuses = [s["status"] for s in summary["steps"].values()]
    # Stopped inside a step or between two: either way no step ran after it.
    assert statuses[-1] == "terminated" or "terminated" in summary
    assert len(statuses) <= 4
    with tarfile.open(pack) as tar:
        packed = json.load(tar.extractfile("term/summary.json"))
    assert packed["steps"] == summary["steps"]
    if (out / "profile" / "samples.parquet").exists():  # the sweep's rows up to the stop
        assert len(read_samples(out / "profile")) > 0


def test_a_failing_policy_is_recorded_and_the_others_still_replay(tmp_path, capsys):
    out = tmp_path / "replay"
    argv = ["--dry-run", "--out", str(out), "--steps", "replay", "--policies", "nope,vllm"]
    assert campaign_module().main(argv) == 0
    replay = json.loads((out / "replay.json").read_text())
    assert replay["nope"]["status"] == "failed" and "twin run" in replay["nope"]["reason"]
    assert replay["vllm"]["output_tokens_per_s"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"step": "replay", "figure": "replay of nope", "value": "failed", "target": ""} in (
        summary["figures"]
    )
