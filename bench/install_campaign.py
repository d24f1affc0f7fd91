"""Put a GPU campaign's pack where the repository keeps it, and say what to commit.

The measured profile goes to ``profiler/profiles/<device>/<model>/`` (the device as it reports
itself, e.g. "NVIDIA H200" -> nvidia-h200), the campaign's results to
``bench/results/gpu-campaign-<device>-<date>/``. Nothing already there is overwritten, and a
dry run's pack (CPU times) is refused unless ``--allow-dry-run``.

    python bench/install_campaign.py campaign.tar.gz [--log campaign.log]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE_FILES = ("meta.json", "samples.parquet", "fit.json")
RESULT_FILES = (
    "summary.json",
    "meta.json",
    "peaks.json",
    "partitions.json",
    "corun.json",
    "mixed.json",
    "runtime.json",
    "switch.json",
    "replay.json",
    "validation/validation.json",
)


class InstallError(Exception):
    """The pack cannot be installed (one line)."""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def unpack(pack: Path, into: Path) -> Path:
    """The campaign directory inside ``pack``, extracted under ``into``."""
    try:
        with tarfile.open(pack) as tar:
            members = tar.getmembers()
            for m in members:
                if m.name.startswith("/") or ".." in Path(m.name).parts or not (
                    m.isfile() or m.isdir()
                ):
                    raise InstallError(f"{pack}: unsafe member {m.name!r}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, members=members, filter="data")
            else:
                tar.extractall(into, members=members)
    except (OSError, tarfile.TarError) as exc:
        raise InstallError(f"{pack}: not a readable tar.gz ({exc})") from None
    tops = {Path(m.name).parts[0] for m in members if m.name}
    if len(tops) != 1 or not (into / next(iter(tops)) / "summary.json").is_file():
        raise InstallError(f"{pack}: expected one campaign directory with a summary.json")
    return into / next(iter(tops))


def install(pack: Path, root: Path, log: Path | None, allow_dry_run: bool) -> dict[str, Path]:
    with tempfile.TemporaryDirectory() as tmp:
        campaign = unpack(pack, Path(tmp))
        summary = json.loads((campaign / "summary.json").read_text())
        if summary.get("dry_run") and not allow_dry_run:
            raise InstallError(f"{pack}: a CPU dry run's times mean nothing; not installed")
        meta = summary.get("meta") or {}
        device, date = meta.get("device"), meta.get("date")
        if not device or not date:
            raise InstallError(f"{pack}: summary.json names no device or date")
        profile = campaign / "profile"
        has_profile = all((profile / f).is_file() for f in PROFILE_FILES)
        model = ""
        if has_profile:
            model = json.loads((profile / "meta.json").read_text())["model"]["name"]
        targets = {"results": root / "bench" / "results" / f"gpu-campaign-{slug(device)}-{date}"}
        if has_profile:
            targets["profile"] = root / "profiler" / "profiles" / slug(device) / slug(model)
        taken = [str(p) for p in targets.values() if p.exists()]
        if taken:
            raise InstallError(f"{taken[0]} exists; move it away first (nothing is overwritten)")
        # The results name files by the path the run wrote them to, on the GPU machine: keep
        # only the part inside the campaign directory.
        where = summary.get("out")
        for name in RESULT_FILES:
            if (campaign / name).is_file():
                dest = targets["results"] / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                text = (campaign / name).read_text()
                dest.write_text(text.replace(f"{where}/", "") if where else text)
        if log is not None:
            shutil.copy2(log, targets["results"] / "campaign.log")
        if has_profile:
            targets["profile"].mkdir(parents=True)
            for path in sorted(profile.iterdir()):
                if path.name in PROFILE_FILES or path.suffix == ".png":
                    shutil.copy2(path, targets["profile"] / path.name)
    return targets


def commit_message(root: Path, targets: dict[str, Path]) -> str:
    summary = json.loads((targets["results"] / "summary.json").read_text())
    m = summary["meta"]
    not_ok = [f"{k} {v['status']}" for k, v in summary["steps"].items() if v["status"] != "ok"]
    return (
        f"Measured on {m['device']} {m['date']}: driver {m.get('driver')}, CUDA {m.get('cuda')}, "
        f"torch {m.get('torch')}" + (f"; {', '.join(not_ok)}" if not_ok else "; every step ran")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pack", type=Path)
    p.add_argument("--log", type=Path, default=None, help="the run's campaign.log")
    p.add_argument("--root", type=Path, default=ROOT, help="repository to install into")
    p.add_argument("--allow-dry-run", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.log is not None and not args.log.is_file():
            raise InstallError(f"--log {args.log}: no such file")
        targets = install(args.pack, args.root, args.log, args.allow_dry_run)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for kind, path in targets.items():
        print(f"{kind}: {path}")
    print(f"commit message: {commit_message(args.root, targets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
