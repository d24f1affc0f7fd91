"""``twin gpus``: the GPUs ``--gpu`` knows, their SM split, and operator-time source."""

from __future__ import annotations

from rich.table import Table

from profiler.gpus import GPUS, GpuEntry
from profiler.tables.lookup import manifest
from twin.commands.console import console


def gpu_rows() -> list[dict[str, str]]:
    have = manifest()
    rows = []
    for e in GPUS.values():
        rows.append(
            {
                "gpu": e.key,
                "name": e.name,
                "sms": str(e.num_sms),
                "GiB": f"{e.memory_bytes / 2**30:.0f}",
                "TB/s": f"{e.hbm_bytes_per_s / 1e12:.2f}",
                "bf16/fp8 TF": f"{e.bf16_flops / 1e12:.0f}/{_fp8(e)}",
                "split": f"{e.sm_granularity} SMs" + ("" if e.sm_version >= 90 else " *"),
                "operator times": _source(e, have),
            }
        )
    return rows


def _fp8(e: GpuEntry) -> str:
    return f"{e.fp8_flops / 1e12:.0f}" if e.fp8_flops else "-"


def _source(e: GpuEntry, have: dict) -> str:
    stacks = have["gpus"].get(e.tables or "", {})
    if not stacks:
        return "datasheet roofline"
    return "measured: " + ", ".join(f"{s} {v['version']}" for s, v in stacks.items())


def print_gpus() -> None:
    rows = gpu_rows()
    table = Table(title="GPUs (--gpu); default h100, --stack vllm")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    console.print(
        f"measured: {have_source()} per-operator tables; datasheet: roofline from the "
        "GPU's peaks. Splits: green-context groups on sm_90+; * pre-sm_90 parts have no "
        "green-context grouping rule twin has checked (groups of 2 SMs assumed).",
        highlight=False,
    )


def have_source() -> str:
    m = manifest()
    return f"{m['source']} {m['version']}"
