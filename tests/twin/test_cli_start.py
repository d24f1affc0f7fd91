import dataclasses
import importlib
import subprocess
import sys

import typer
from typer.testing import CliRunner

import policies
from twin.commands.cli import LAZY_COMMANDS, app
from twin.commands.console import friendly_errors
from twin.commands.policy_help import PARAM_DOCS, describe
from twin.errors import TwinError

runner = CliRunner()


def test_help_lists_every_command_without_importing_the_heavy_stack():
    code = (
        "import sys; from twin.commands.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('pandas', 'matplotlib', 'scipy', 'torch', 'simpy')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    for name in (*LAZY_COMMANDS, "policies"):
        assert name in out.stdout


def test_lazy_help_lines_are_the_commands_docstrings():
    for module, attr, line in LAZY_COMMANDS.values():
        doc = getattr(importlib.import_module(module), attr).__doc__
        assert doc.strip().splitlines()[0] == line


def test_a_lazy_command_runs_and_shows_its_own_options():
    result = runner.invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0 and "--trace" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("twin ")


def test_error_hints_keep_their_brackets(capsys):
    @friendly_errors
    def fails() -> None:
        raise TwinError("--ray needs Ray: pip install 'twin[ray]'")

    try:
        fails()
    except typer.Exit as exc:
        assert exc.exit_code == 2
    assert "pip install 'twin[ray]'" in capsys.readouterr().err


def test_running_out_of_memory_is_one_line_naming_the_ways_out(capsys):
    @friendly_errors
    def fails() -> None:
        raise MemoryError("Unable to allocate 1.86 GiB for an array")

    try:
        fails()
    except typer.Exit as exc:
        assert exc.exit_code == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "--no-token-times" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_every_policy_parameter_has_a_unit_and_a_meaning():
    for name in policies.names():
        fields = dataclasses.fields(policies.params_class(name))
        assert {f.name for f in fields} <= set(PARAM_DOCS), name
        for _, default, unit, meaning in describe(name):
            assert unit and meaning and default
    result = runner.invoke(app, ["policies"])
    assert result.exit_code == 0
    assert "decode_sms=48 (SMs)" in result.output
