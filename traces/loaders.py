"""Readers for each public trace format, and format detection from the columns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from policies.numbers import check_number
from traces.arrivals import arrival_times
from traces.conversations import read_sharegpt, read_vllm_custom, sniff
from traces.errors import TraceError
from traces.workload import Workload

AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT = ("Timestamp", "Request tokens", "Response tokens")
LENGTHS = ("num_prefill_tokens", "num_decode_tokens")
# Vidur's processed traces: the lengths columns plus arrival seconds.
VIDUR = ("arrived_at", *LENGTHS)
TABLE = ("arrival_s", "prompt_tokens", "output_tokens")
# More tokens than any model's context: a corrupt field, and beyond float64's exact range.
MAX_TOKENS = 2**40
FORMATS = ("azure", "burstgpt", "mooncake", "vidur", "lengths", "table", "sharegpt", "vllm-custom")


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
    if path.is_dir():
        raise TraceError(f"{path} is a directory; give a trace file")
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
        "vidur": _vidur,
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
        ("vidur", VIDUR[:1]),
        ("lengths", LENGTHS),
        ("table", TABLE),
    ):
        if set(need) & cols:
            return fmt
    raise TraceError(
        f"{path}: cannot tell the trace format from columns {list(df.columns)}; expected "
        f"Azure {list(AZURE)}, BurstGPT {list(BURSTGPT)}, Vidur {list(VIDUR)}, "
        f"lengths {list(LENGTHS)} or "
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
    arr = values.to_numpy(dtype=np.float64)
    huge = np.flatnonzero(~(np.abs(arr) <= MAX_TOKENS))
    if huge.size:
        raise TraceError(
            f"{path}: row {huge[0] + 1}: column {col!r} is {arr[huge[0]]}, not a token count "
            f"(at most {MAX_TOKENS})"
        )
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
    infinite = np.flatnonzero(~np.isfinite(arr))
    if infinite.size:
        row = infinite[0]
        raise TraceError(f"{path}: row {row + 1}: column {col!r} is {arr[row]}, not a finite time")
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
    try:
        stamps = pd.to_datetime(raw, format="ISO8601", errors="coerce")
    except (ValueError, TypeError):
        # pandas refuses a column mixing time zones (or zone-less and zoned stamps).
        raise TraceError(
            f"{path}: TIMESTAMP mixes time zones; give every row the same offset (e.g. +00:00)"
        ) from None
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
    return _timed(arrival, prompt, output, keep, path, {"format": "azure", **notes})


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
    return _timed(arrival, prompt, output, keep, path, notes)


def _vidur(df: pd.DataFrame, path: Path) -> Workload:
    _require(df, path, VIDUR, "Vidur")
    arrival = _times(pd.to_numeric(df["arrived_at"], errors="coerce"), "arrived_at", path)
    prompt = _tokens(df, "num_prefill_tokens", path)
    output = _tokens(df, "num_decode_tokens", path)
    keep, notes = _keep_served(prompt, output)
    return _timed(arrival, prompt, output, keep, path, {"format": "vidur", **notes})


def _timed(
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    keep: np.ndarray,
    path: Path,
    notes: dict,
) -> Workload:
    """The kept rows of a trace with its own arrivals, timed from the first kept one."""
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
    try:
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    row = _mooncake_row(line, f"{path}: line {line_no}")
                    stamps.append(row[0])
                    prompts.append(row[1])
                    outputs.append(row[2])
                    hashes.append(row[3])
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not UTF-8 text; a Mooncake trace is JSON lines") from None
    if not stamps:
        raise TraceError(f"{path}: the file has no requests")
    arrival = _times(pd.Series(stamps) / 1000.0, "timestamp", path)
    prompt, output = np.array(prompts, dtype=np.int64), np.array(outputs, dtype=np.int64)
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


def _mooncake_row(line: str, where: str) -> tuple[float, int, int, tuple[int, ...]]:
    """One Mooncake request: timestamp (ms), input_length, output_length, hash_ids."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise TraceError(f"{where} is not valid JSON") from None
    if not isinstance(row, dict):
        raise TraceError(f"{where} is not a JSON object")
    missing = [k for k in ("timestamp", "input_length", "output_length") if k not in row]
    if missing:
        raise TraceError(
            f"{where} has no field {missing[0]!r} (Mooncake rows have timestamp, input_length, "
            "output_length, hash_ids)"
        )
    stamp = check_number(row["timestamp"], f"{where}: timestamp", error=TraceError)
    prompt = check_number(
        row["input_length"],
        f"{where}: input_length",
        integer=True,
        low=0,
        high=MAX_TOKENS,
        error=TraceError,
    )
    output = check_number(
        row["output_length"],
        f"{where}: output_length",
        integer=True,
        low=0,
        high=MAX_TOKENS,
        error=TraceError,
    )
    raw = row.get("hash_ids", [])
    if not isinstance(raw, list):
        raise TraceError(f"{where}: hash_ids must be a list of block hashes, got {raw!r}")
    hashes = tuple(
        check_number(h, f"{where}: hash_ids", integer=True, error=TraceError) for h in raw
    )
    return float(stamp), prompt, output, hashes
