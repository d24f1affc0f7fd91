"""The ``twin`` command line."""

from __future__ import annotations

import typer

from twin.commands.compare import compare_command
from twin.commands.profile import profile_command
from twin.commands.run import run_command
from twin.commands.simulate import simulate_command
from twin.commands.validate import validate_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Simulate, profile and validate LLM serving with intra-GPU prefill/decode splits.",
)
app.command("simulate")(simulate_command)
app.command("compare")(compare_command)
app.command("run")(run_command)
app.command("profile")(profile_command)
app.command("validate")(validate_command)


@app.callback()
def _root() -> None:
    """Simulate, profile and validate LLM serving with intra-GPU prefill/decode splits."""


@app.command("policies")
def policies_command() -> None:
    """List the policies and their parameters with defaults."""
    import dataclasses

    import policies
    from twin.commands.console import console

    for name in policies.names():
        params = dataclasses.fields(policies.params_class(name))
        args = ", ".join(f"{f.name}={f.default!r}" for f in params)
        console.print(f"[bold]{name}[/]  {args}", highlight=False)


@app.command("gpus")
def gpus_command() -> None:
    """List the GPUs --gpu knows, their SM split, and where their operator times come from."""
    from twin.commands.gpus import print_gpus

    print_gpus()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
