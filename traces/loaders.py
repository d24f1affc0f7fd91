"""Readers for each public trace format, and format detection from the columns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from traces.arrivals import arrival_times
from traces.conversations import read_sharegpt, read_vllm_custom, sniff
from traces.errors import TraceError
from traces.workload import Workload

AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT = ("Timestamp", "Request tokens", "Response tokens")
LENGTHS = ("num_prefill_tokens", "num_decode_tokens")
TABLE = ("arrival_s", "prompt_tokens", "output_tokens")
FORMATS = ("azure", "burstgpt", "mooncake", "lengths", "table", "sharegpt", "vllm-custom")


def read(
    path: Path,
    fmt: str | None,
    rate: float | None,
    cv: float,
    seed: int,
    tokenizer: str | None = None,
) -> Workload:
    if fmt is not None and fmt not in FORMATS:
        raise TraceError(f"unknown trace format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    if path.stat().st_size == 0:
        raise TraceError(f"{path}: the file is empty")
    if fmt is None and path.suffix in (".jsonl", ".json"):
        fmt = sniff(path) or "mooncake"
    if fmt == "sharegpt":
        return read_sharegpt(path, rate, cv, seed, tokenizer)
    if fmt == "vllm-custom":
        return read_vllm_custom(path, rate, cv, seed, tokenizer)
    if fmt == "mooncake":
        return _mooncake(path)
    df = _read_csv(path)
    fmt = fmt or detect(df, path)
    reader: Callable[..., Workload] = {
        "azure": _azure,
        "burstgpt": _burstgpt,
        "lengths": _lengths,
        "table": _table,
    }[fmt]
    wl = reader(df, path) if fmt != "lengths" else reader(df, path, rate, cv, seed)
    if rate is not None and fmt != "lengths":
        wl = wl.with_rate(rate)
    return wl


def detect(df: pd.DataFrame, path: Path) -> str:
    cols = set(df.columns)
    # The first format sharing a column wins, so a file missing one column is reported as such.
    for fmt, need in (
        ("azure", AZURE),
        ("burstgpt", BURSTGPT),
        ("lengths", LENGTHS),
        ("table", TABLE),
    ):
        if set(need) & cols:
            return fmt
    raise TraceError(
        f"{path}: cannot tell the trace format from columns {list(df.columns)}; expected "
        f"Azure {list(AZURE)}, BurstGPT {list(BURSTGPT)}, lengths {list(LENGTHS)} or "
        f"{list(TABLE)} (or pass --format)"
    )


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise TraceError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise TraceError(f"{path}: not a readable CSV ({first})") from None
    if df.empty:
        raise TraceError(f"{path}: the file has a header but no rows")
    return df


def _require(df: pd.DataFrame, path: Path, cols: tuple[str, ...], fmt: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise TraceError(
            f"{path}: missing column {missing[0]!r} for the {fmt} format (expected {list(cols)})"
        )


def _tokens(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy())
    if bad.size:
        raise TraceError(
            f"{path}: row {bad[0] + 1}: column {col!r} is {df[col].iloc[bad[0]]!r}, not a number"
        )
    arr = values.to_numpy()
    neg = np.flatnonzero(arr < 0)
    if neg.size:
        raise TraceError(f"{path}: row {neg[0] + 1}: column {col!r} is negative ({arr[neg[0]]})")
    if np.any(arr != np.floor(arr)):
        row = np.flatnonzero(arr != np.floor(arr))[0]
        raise TraceError(f"{path}: row {row + 1}: column {col!r} is not a whole number")
    return arr.astype(np.int64)


def _times(values: pd.Series, col: str, path: Path) -> np.ndarray:
    missing = np.flatnonzero(values.isna().to_numpy())
    if missing.size:
        raise TraceError(f"{path}: row {missing[0] + 1}: column {col!r} has no timestamp")
    arr = values.to_numpy(dtype=np.float64)
    back = np.flatnonzero(np.diff(arr) < 0)
    if back.size:
        raise TraceError(
            f"{path}: row {back[0] + 2}: column {col!r} goes back in time; the trace must be "
            "sorted by arrival"
        )
    return arr - arr[0]


def _keep_served(prompt: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Requests that produced no token (or had no prompt) cannot be replayed: drop and count."""
    zero_out = output == 0
    zero_in = (prompt == 0) & ~zero_out
    keep = ~(zero_out | zero_in)
    return keep, {
        "dropped_zero_output": int(zero_out.sum()),
        "dropped_zero_prompt": int(zero_in.sum()),
    }


def _azure(df: pd.DataFrame, path: Path) -> Workload:
    _require(df, path, AZURE, "Azure")
    raw = df["TIMESTAMP"]
    stamps = pd.to_datetime(raw, format="ISO8601", errors="coerce")
    bad = np.flatnonzero(stamps.isna().to_numpy() & raw.notna().to_numpy())
    if bad.size:
        raise TraceError(f"{path}: row {bad[0] + 1}: TIMESTAMP {raw.iloc[bad[0]]!r} is not a date")
    valid = stamps.notna().to_numpy()
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    # Seconds from the first stamp, subtracted in integers so 7-digit fractions survive.
    seconds = pd.Series(np.where(valid, (ns - ns[valid][0]) / 1e9 if valid.any() else 0.0, np.nan))
    arrival = _times(seconds, "TIMESTAMP", path)
    prompt = _tokens(df, "ContextTokens", path)
    output = _tokens(df, "GeneratedTokens", path)
    keep, notes = _keep_served(prompt, output)
    return Workload(
        arrival[keep] - arrival[keep][0] if keep.any() else arrival[keep],
        prompt[keep],
        output[keep],
        name=path.stem,
        source=str(path),
        notes={"format": "azure", **notes},
    )


def _burstgpt(df: pd.DataFrame, path: Path) -> Workload:
    _require(df, path, BURSTGPT, "BurstGPT")
    arrival = _times(pd.to_numeric(df["Timestamp"], errors="coerce"), "Timestamp", path)
    prompt = _tokens(df, "Request tokens", path)
    output = _tokens(df, "Response tokens", path)
    failed = output == 0
    keep = ~failed & (prompt > 0)
    notes = {
        "format": "burstgpt",
        "dropped_failed": int(failed.sum()),
        "dropped_zero_prompt": int(((prompt == 0) & ~failed).sum()),
    }
    kept = arrival[keep]
    return Workload(
        kept - kept[0] if kept.size else kept,
        prompt[keep],
        output[keep],
        name=path.stem,
        source=str(path),
        notes=notes,
    )


def _lengths(df: pd.DataFrame, path: Path, rate: float | None, cv: float, seed: int) -> Workload:
    _require(df, path, LENGTHS, "lengths")
    if rate is None:
        raise TraceError(
            f"{path}: a length-only trace needs an arrival rate; pass --rate REQ_PER_S"
        )
    prompt = _tokens(df, "num_prefill_tokens", path)
    output = _tokens(df, "num_decode_tokens", path)
    keep, notes = _keep_served(prompt, output)
    n = int(keep.sum())
    return Workload(
        arrival_times(n, rate, cv, seed),
        prompt[keep],
        output[keep],
        name=path.stem,
        source=str(path),
        notes={
            "format": "lengths",
            "arrivals": "poisson" if cv == 1 else "gamma",
            "rate": rate,
            "cv": cv,
            "seed": seed,
            **notes,
        },
    )


def _table(df: pd.DataFrame, path: Path) -> Workload:
    _require(df, path, TABLE, "table")
    arrival = _times(pd.to_numeric(df["arrival_s"], errors="coerce"), "arrival_s", path)
    prompt = _tokens(df, "prompt_tokens", path)
    output = _tokens(df, "output_tokens", path)
    keep, notes = _keep_served(prompt, output)
    return Workload(
        arrival[keep],
        prompt[keep],
        output[keep],
        name=path.stem,
        source=str(path),
        notes={"format": "table", **notes},
    )


def _mooncake(path: Path) -> Workload:
    stamps, prompts, outputs, hashes = [], [], [], []
    with path.open() as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                stamps.append(float(row["timestamp"]))
                prompts.append(int(row["input_length"]))
                outputs.append(int(row["output_length"]))
                hashes.append(tuple(int(h) for h in row.get("hash_ids", ())))
            except json.JSONDecodeError:
                raise TraceError(f"{path}: line {line_no} is not valid JSON") from None
            except KeyError as exc:
                raise TraceError(
                    f"{path}: line {line_no} has no field {exc.args[0]!r} (Mooncake rows have "
                    "timestamp, input_length, output_length, hash_ids)"
                ) from None
            except (TypeError, ValueError):
                raise TraceError(f"{path}: line {line_no} has a non-numeric field") from None
    if not stamps:
        raise TraceError(f"{path}: the file has no requests")
    arrival = _times(pd.Series(stamps) / 1000.0, "timestamp", path)
    prompt, output = np.array(prompts), np.array(outputs)
    for name, values in (("input_length", prompt), ("output_length", output)):
        neg = np.flatnonzero(values < 0)
        if neg.size:
            raise TraceError(f"{path}: line {neg[0] + 1}: {name} is negative")
    keep, notes = _keep_served(prompt, output)
    idx = np.flatnonzero(keep)
    return Workload(
        arrival[keep],
        prompt[keep],
        output[keep],
        prefix_hashes=tuple(hashes[i] for i in idx),
        name=path.stem,
        source=str(path),
        notes={"format": "mooncake", **notes},
    )
