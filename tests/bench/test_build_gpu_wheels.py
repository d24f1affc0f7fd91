"""The GPU wheel bundle: which packages travel, and the checks that the bundle is whole.

Nothing here downloads: the closure is computed over stand-in metadata and the checks run on
wheels built in a temporary folder."""

import importlib.util
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "build_gpu_wheels.py"
spec = importlib.util.spec_from_file_location("build_gpu_wheels", SCRIPT)
wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheels)


def test_markers_are_evaluated_for_the_gpu_machine():
    assert wheels.needs(
        [
            "Rich (>=13)",
            'colorama; platform_system == "Windows"',
            "pytest; extra == 'test'",
            "typing_extensions>=4; python_version < '3.13'",
        ]
    ) == ["rich", "typing-extensions"]


def test_the_closure_carries_what_the_image_lacks_and_leaves_its_binaries():
    meta = {
        "simpy": [],
        "typer": ["rich>=13", "shellingham", 'colorama; platform_system == "Windows"'],
        "rich": ["pygments<3", "markdown-it-py"],
        "markdown-it-py": ["mdurl~=0.1"],
        "pandas": ["numpy>=1.26"],
    }
    carried = wheels.closure(["numpy", "pandas", "simpy", "typer"], lambda n: meta.get(n, []))
    want = ["markdown-it-py", "mdurl", "pygments", "rich", "shellingham", "simpy", "typer"]
    assert carried == want


def test_the_projects_own_closure_holds_simpy_and_no_binary_of_the_image():
    carried = wheels.closure(wheels.project_requirements(SCRIPT.parents[1] / "pyproject.toml"))
    assert "simpy" in carried and "typer" in carried
    assert not set(carried) & {"numpy", "torch", "pandas", "pyarrow", "scipy", "matplotlib"}


def _wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    path = directory / f"{name}-{version}-py3-none-any.whl"
    lines = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_an_unmet_requirement_is_named(tmp_path):
    _wheel(tmp_path, "simpy", "4.1.2", [])
    _wheel(tmp_path, "typer", "0.29.2", ["rich>=13", "not-anywhere>=1"])
    problems = wheels.check_bundle(tmp_path)
    assert problems == [
        "typer-0.29.2-py3-none-any.whl needs not-anywhere: neither carried nor on the GPU image"
    ]


def test_two_versions_of_one_package_are_refused(tmp_path):
    _wheel(tmp_path, "simpy", "4.1.1", [])
    _wheel(tmp_path, "simpy", "4.1.2", [])
    with pytest.raises(wheels.BundleError, match="two wheels of simpy"):
        wheels.check_bundle(tmp_path)


def test_check_of_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert wheels.main(["--check", "--dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "no such folder" in err and len(err.strip().splitlines()) == 1
