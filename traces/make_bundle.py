"""Rebuild the slices in traces/data from the original public files.

    python -m traces.make_bundle SOURCE_DIR

SOURCE_DIR holds the files as published (see traces/data/ATTRIBUTION.md). Slices: the first
ten minutes of the Azure 2023 conversation and code traces, the first 600 requests of the
Mooncake synthetic trace, the first 400 rows of BurstGPT, and the first 10,000 rows of the
ShareGPT and arXiv length statistics.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

DATA = Path(__file__).parent / "data"
MINUTES = 10
LENGTH_ROWS = 10_000
MOONCAKE_ROWS = 600


def azure_slice(src: Path, dst: Path) -> None:
    df = pd.read_csv(src, dtype=str)
    stamps = pd.to_datetime(df["TIMESTAMP"], format="ISO8601")
    keep = stamps < stamps.iloc[0] + pd.Timedelta(minutes=MINUTES)
    df[keep].to_csv(dst, index=False)


def head_lines(src: Path, dst: Path, rows: int, header: bool) -> None:
    with src.open() as fh:
        lines = [line for _, line in zip(range(rows + int(header)), fh, strict=False)]
    dst.write_text("".join(lines))


def main(source: Path) -> None:
    DATA.mkdir(exist_ok=True)
    azure_slice(source / "azure2023_conv.csv", DATA / "azure2023_conv_10min.csv")
    azure_slice(source / "azure2023_code.csv", DATA / "azure2023_code_10min.csv")
    head_lines(
        source / "mooncake_synthetic_trace.jsonl",
        DATA / "mooncake_synthetic_first600.jsonl",
        MOONCAKE_ROWS,
        header=False,
    )
    head_lines(source / "burstgpt1_first400.csv", DATA / "burstgpt1_first400.csv", 400, header=True)
    for name in (
        "sharegpt_lengths_llama2_tokenizer.csv",
        "arxiv_summarization_lengths_llama2_tokenizer.csv",
    ):
        head_lines(source / name, DATA / name, LENGTH_ROWS, header=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m traces.make_bundle SOURCE_DIR")
    main(Path(sys.argv[1]))
