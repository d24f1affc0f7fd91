"""The ``twin`` command line.

Each command's module is imported only when that command runs (or shows its own help), so
``twin --help`` and ``twin --version`` answer without loading pandas, matplotlib or scipy.
"""

from __future__ import annotations

import importlib
from typing import Any

import click
import typer
from typer.core import TyperGroup

HELP = "Simulate, profile and validate LLM serving with intra-GPU prefill/decode splits."

# name -> (module, function, one-line help shown by ``twin --help``)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": (
        "twin.commands.simulate",
        "simulate_command",
        "Replay a trace through a policy on the simulated GPU; write records, summary and plots.",
    ),
    "compare": (
        "twin.commands.compare",
        "compare_command",
        "Sweep request rates for several policies; write compare.parquet/.csv and plots.",
    ),
    "run": (
        "twin.commands.run",
        "run_command",
        "Run the real engine: serve the OpenAI API, or replay --trace and write the run files.",
    ),
    "profile": (
        "twin.commands.profile",
        "profile_command",
        "Sweep operators over SM partitions on a GPU and fit the latency model's curves.",
    ),
    "validate": (
        "twin.commands.validate",
        "validate_command",
        "Replay the real runs in the simulator and report how far apart they are.",
    ),
}


class LazyGroup(TyperGroup):
    """A typer group whose commands are built from their modules on first use."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS}, key=_command_order)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in LAZY_COMMANDS:
            return self.commands.get(cmd_name)
        if self._listing:  # the group's own help needs only each command's line
            text = LAZY_COMMANDS[cmd_name][2]
            return click.Command(cmd_name, help=text, short_help=text)
        module, attr, _ = LAZY_COMMANDS[cmd_name]
        sub = typer.Typer(add_completion=False)
        sub.command(cmd_name)(getattr(importlib.import_module(module), attr))
        command = typer.main.get_command(sub)
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def _command_order(name: str) -> int:
    order = [*LAZY_COMMANDS, "policies"]
    return order.index(name) if name in order else len(order)


app = typer.Typer(cls=LazyGroup, add_completion=False, no_args_is_help=True, help=HELP)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"twin {version('twin')}")
        except PackageNotFoundError:
            typer.echo("twin (not installed; run pip install -e .)")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Simulate, profile and validate LLM serving with intra-GPU prefill/decode splits."""


@app.command("policies")
def policies_command() -> None:
    """List the policies and their parameters: default, unit and meaning."""
    from twin.commands.policy_help import print_policies

    print_policies()


@app.command("gpus")
def gpus_command() -> None:
    """List the GPUs --gpu knows, their SM split, and where their operator times come from."""
    from twin.commands.gpus import print_gpus

    print_gpus()


def main(argv: Any = None) -> None:
    app(argv)


if __name__ == "__main__":
    main()
