"""Shared terminal output: one-line errors, progress bars, summary tables."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from twin.errors import SimulationError, user_errors

console = Console()
err_console = Console(stderr=True)


def friendly_errors(fn: Callable) -> Callable:
    """Print a user's mistake as one line on stderr and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (*user_errors(), SimulationError) as exc:
            # escaped: a hint such as pip install 'twin[ray]' is not rich markup
            message = escape(str(exc))
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # unwritable or impossible paths: the user's to fix
            from twin.outputs.paths import describe_os_error

            err_console.print(
                f"[bold red]error:[/] {describe_os_error(exc)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None
        except MemoryError:
            err_console.print(
                "[bold red]error:[/] out of memory; simulate fewer requests, pass "
                "--no-token-times, or run on a machine with more memory",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper


@contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yields ``update(done, total)``; draws a rich bar on a terminal, nothing when disabled."""
    if not enabled:
        yield lambda done, total: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def summary_table(summary: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("requests finished", f"{summary['finished']} / {summary['requests']}"),
        (
            "throughput",
            f"{summary['throughput_rps']:.2f} req/s, "
            f"{summary['output_tokens_per_s']:.0f} out tok/s",
        ),
        (
            "goodput",
            f"{summary['goodput_rps']:.2f} req/s "
            f"({100 * summary['slo_attainment']:.1f}% meet both SLOs)",
        ),
        ("TTFT p50 / p90 / p99", _ms(summary, "ttft")),
        ("TBT p50 / p90 / p99", _ms(summary, "tbt")),
        ("E2E p50 / p90 / p99", _ms(summary, "e2e")),
        (
            "SLOs",
            f"TTFT <= {summary['slo_ttft_s']:g} s, TBT ({summary['slo_tbt_statistic']}) "
            f"<= {summary['slo_tbt_s']:g} s",
        ),
        ("preemptions", str(summary["preemptions"])),
        ("rejected", _rejected(summary)),
    ]
    if summary.get("prefix_caching"):
        rows.append(
            (
                "prefix cache hits",
                f"{100 * summary['prefix_hit_rate_tokens']:.1f}% of prompt tokens, "
                f"{100 * summary['prefix_hit_rate_requests']:.1f}% of admissions",
            )
        )
    if "iterations" in summary:
        rows.append(("iterations", f"{summary['iterations']}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _rejected(summary: dict[str, Any]) -> str:
    reasons = summary.get("rejected_by_reason") or {}
    detail = ", ".join(f"{n} {why}" for why, n in reasons.items())
    return f"{summary.get('rejected', 0)}" + (f" ({detail})" if detail else "")


def _ms(summary: dict[str, Any], key: str) -> str:
    return " / ".join(f"{1000 * summary[f'{key}_p{p}_s']:.1f}" for p in (50, 90, 99)) + " ms"
