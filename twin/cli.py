"""The ``twin`` command line."""

from __future__ import annotations

import typer

from twin.cmd_simulate import simulate_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Simulate, profile and validate LLM serving with intra-GPU prefill/decode splits.",
)
app.command("simulate")(simulate_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
