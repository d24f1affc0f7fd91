"""Build the wheel bundle the GPU campaign needs on a machine that reaches no package registry.

The GPU machine's image (an NVIDIA H200 with Python 3.12, torch 2.11, triton 3.6, numpy,
pandas, pyarrow, scipy, matplotlib and many more) lacks some of the project's dependencies
(simpy) and holds others at versions nobody checked here. This script takes the project's
runtime dependencies, keeps on the image the heavy binary ones that must match its CUDA and
numpy build, and downloads every other package of their requirement closure as a CPython
3.12 x86-64 wheel, pinned to the version installed where the script runs (the versions the
tests passed with). It checks that each requirement is either in the bundle or on the image,
and that the bundle plus the working tree fits what travels to that machine (64 MiB).

    python bench/build_gpu_wheels.py            # into .gpu-wheels/ (ignored by git)
    python bench/build_gpu_wheels.py --check    # only list and size what is already there

On the GPU machine: ``python3 -m pip install -q --no-index --no-deps --no-compile
--no-cache-dir --upgrade --target /tmp/site .gpu-wheels/*.whl`` and put /tmp/site first on
PYTHONPATH (docs/gpu.md has the whole command).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".gpu-wheels"
TRANSFER_LIMIT = 64 * 2**20  # the working tree and carried paths, together
# Left on the image: compiled against its CUDA, numpy ABI and system libraries.
FROM_IMAGE = frozenset(
    "numpy scipy pandas pyarrow matplotlib torch triton safetensors tokenizers "
    "python-dateutil pytz tzdata six contourpy cycler fonttools kiwisolver packaging pillow "
    "pyparsing filelock fsspec jinja2 markupsafe networkx sympy mpmath setuptools".split()
)
# What the image holds (its package list, read 2026-11-17): names a FROM_IMAGE requirement
# may rely on. A requirement neither carried nor listed here fails the check.
IMAGE_PACKAGES = FROM_IMAGE | frozenset(
    "typing-extensions click rich typer pygments markdown-it-py mdurl shellingham "
    "annotated-doc cuda-bindings cuda-python nvidia-ml-py psutil pyyaml requests".split()
)
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


class BundleError(Exception):
    """The bundle cannot be built or does not fit (one line)."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(pyproject: Path) -> list[str]:
    """The ``[project] dependencies`` names of ``pyproject``."""
    import tomllib

    data = tomllib.loads(pyproject.read_text())
    return [canonical(Requirement(r).name) for r in data["project"]["dependencies"]]


def needs(requires: list[str] | None) -> list[str]:
    """Requirement names that apply on the GPU machine (no extras, markers evaluated there)."""
    out = []
    for text in requires or []:
        req = Requirement(text)
        if req.marker is not None and not Marker(str(req.marker)).evaluate(TARGET):
            continue
        out.append(canonical(req.name))
    return out


def closure(roots: list[str], requires_of=lambda n: md.requires(n)) -> list[str]:
    """Every package to carry: the roots not left on the image and what they need."""
    carry: list[str] = []
    todo = [r for r in roots if r not in FROM_IMAGE]
    while todo:
        name = todo.pop(0)
        if name in carry:
            continue
        carry.append(name)
        todo += [n for n in needs(requires_of(name)) if n not in FROM_IMAGE and n not in carry]
    return sorted(carry)


def pins(names: list[str]) -> list[str]:
    try:
        return [f"{n}=={md.version(n)}" for n in names]
    except md.PackageNotFoundError as exc:
        raise BundleError(
            f"{exc.name} is not installed here: install the project (pip install -e .) first"
        ) from None


def download(specs: list[str], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(directory)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    done = subprocess.run(cmd + specs, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise BundleError(f"pip download: {last}")


def wheel_names(directory: Path) -> dict[str, Path]:
    """Wheels in ``directory`` by canonical project name; two versions of one is an error."""
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.whl")):
        name = canonical(path.name.split("-")[0])
        if name in found:
            raise BundleError(
                f"{directory}: two wheels of {name} ({found[name].name}, {path.name}); "
                "delete the folder and build again"
            )
        found[name] = path
    return found


def wheel_requires(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]  # fmt: skip


def check_bundle(directory: Path) -> list[str]:
    """Problems of the wheels in ``directory``: an unmet requirement is one line each."""
    wheels = wheel_names(directory)
    problems = []
    for path in wheels.values():
        for need in needs(wheel_requires(path)):
            if need not in wheels and need not in IMAGE_PACKAGES:
                problems.append(f"{path.name} needs {need}: neither carried nor on the GPU image")
    return problems


def tree_bytes(root: Path) -> int:
    """What travels without being carried: tracked and untracked-not-ignored files."""
    done = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    )
    paths = [root / p for p in done.stdout.decode().split("\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--check", action="store_true", help="size and check, download nothing")
    args = parser.parse_args(argv)
    try:
        if not args.check:
            download(pins(closure(project_requirements(ROOT / "pyproject.toml"))), args.dir)
        if not args.dir.is_dir():
            raise BundleError(f"{args.dir}: no such folder; build it first (without --check)")
        problems = check_bundle(args.dir)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BundleError(problems[0] + more)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    wheels = wheel_names(args.dir)
    bundle = sum(p.stat().st_size for p in wheels.values())
    tree = tree_bytes(ROOT)
    for path in wheels.values():
        print(f"{path.stat().st_size / 2**20:6.2f} MiB  {path.name}")
    total = bundle + tree
    print(
        f"{len(wheels)} wheels, {bundle / 2**20:.1f} MiB; working tree {tree / 2**20:.1f} MiB; "
        f"together {total / 2**20:.1f} of {TRANSFER_LIMIT / 2**20:.0f} MiB"
    )
    if total > TRANSFER_LIMIT:
        print("error: the bundle and the working tree exceed what travels", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
