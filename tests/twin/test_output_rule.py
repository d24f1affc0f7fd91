"""The output rule: without --force twin never touches a file it did not write; with --force it
replaces only the files it writes. A directory holding the user's own files survives every
command."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from twin.commands.cli import app
from twin.commands.compare import FILES as COMPARE_FILES
from twin.commands.compare import PLOT_FILES as COMPARE_PLOTS
from twin.experiment import run_files

runner = CliRunner()
TRACE = "synthetic:n=6,rate=2,prompt=fixed(32),output=fixed(4)"
REAL_RUN = Path(__file__).parents[2] / "docs" / "validation" / "cpu-tiny" / "real-vllm"


def users_directory(root: Path, names: tuple[str, ...]) -> dict[Path, bytes]:
    """A directory with the user's own files: some share the names twin writes."""
    files = {
        root / "notes.txt": b"mine",
        root / "plots" / "figure.png": b"my figure",
        root / ".hidden": b"also mine",
    }
    for name in names:
        files[root / name] = f"the user's own {name}".encode()
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def unchanged(files: dict[Path, bytes], except_names: tuple[str, ...] = ()) -> bool:
    return all(p.read_bytes() == data for p, data in files.items() if p.name not in except_names)


# Each command, the files it writes, and the one of them the user already has.
COMMANDS = {
    "simulate": (["simulate", "--trace", TRACE, "--quiet"], run_files(True), "timeline.png"),
    "compare": (
        ["compare", "--trace", TRACE, "--policies", "vllm", "--rates", "1", "--workers", "1"],
        COMPARE_FILES + COMPARE_PLOTS,
        "compare.csv",
    ),
    "validate": (
        ["validate", "--real-records", str(REAL_RUN), "--quiet"],
        ("validation.json",),
        "validation.json",
    ),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_users_files_survive_without_and_with_force(tmp_path, command):
    args, owned, clash = COMMANDS[command]
    if command == "validate" and not REAL_RUN.is_dir():
        pytest.skip("no bundled real run")
    # A file of the user's under one of twin's names: refused, nothing touched.
    files = users_directory(tmp_path, (clash,))
    refused = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert refused.exit_code == 2, refused.output
    assert "--force" in refused.output
    assert unchanged(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {p.relative_to(tmp_path).parts[0] for p in files}
    )
    # With --force only twin's own files are replaced; everything else is the user's still.
    forced = runner.invoke(app, [*args, "--out", str(tmp_path), "--force"])
    assert forced.exit_code == 0, forced.output
    assert unchanged(files, except_names=owned)
    assert (tmp_path / clash).read_bytes() != files[tmp_path / clash]


def test_compare_force_keeps_a_plots_folder_it_never_writes(tmp_path):
    args = COMMANDS["compare"][0]
    first = runner.invoke(app, [*args, "--out", str(tmp_path), "--no-plots"])
    assert first.exit_code == 0, first.output
    mine = tmp_path / "plots" / "keep.png"
    mine.parent.mkdir()
    mine.write_bytes(b"mine")
    again = runner.invoke(app, [*args, "--out", str(tmp_path), "--no-plots", "--force"])
    assert again.exit_code == 0, again.output
    assert mine.read_bytes() == b"mine"


def test_an_empty_out_is_refused_and_the_current_directory_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in ("simulate", "compare"):
        args = COMMANDS[command][0]
        result = runner.invoke(app, [*args, "--out", ""])
        assert result.exit_code == 2 and "--out is empty" in result.output
    assert list(tmp_path.iterdir()) == []
