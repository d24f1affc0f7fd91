"""The profile directory: ``meta.json``, ``samples.parquet`` and ``fit.json``, read and checked.

Every reader raises ``ProfileError`` with one line naming the file and what is wrong, so the
CLI can print it instead of a traceback.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from profiler.config import ModelConfig

META = "meta.json"
SAMPLES = "samples.parquet"
FIT = "fit.json"
FORMAT_VERSION = 1

# Column -> kind ("s" text, "i" integer, "f" float). Shape columns a row does not use hold 0.
# A co-run row describes both lanes at once: a decode lane's own shape is (batch, context) and
# its prefill co-runner's is (chunk, prefix); a prefill lane's row is the mirror image.
SAMPLE_COLUMNS: dict[str, str] = {
    "op_class": "s",
    "op_name": "s",
    "sms": "i",
    "tokens": "i",
    "batch": "i",
    "context": "i",
    "chunk": "i",
    "prefix": "i",
    "co_sms": "i",
    "co_kind": "s",
    "median_s": "f",
    "p10_s": "f",
    "p90_s": "f",
    "repeats": "i",
    "flops": "f",
    "bytes": "f",
}

# Columns of mixed-batch rows only (``op_class`` "mixed": one batch of a prefill chunk plus
# decodes, timed beside each part alone); 0 in every other row. Optional: a table measured
# without a mixed-batch sweep has none of them, and none is invented on reading it.
MIXED_COLUMNS: dict[str, str] = {
    "prefill_tokens": "i",
    "prefix_tokens": "i",
    "n_decode": "i",
    "decode_context": "i",
    "seconds_mixed": "f",
    "seconds_prefill_alone": "f",
    "seconds_decode_alone": "f",
}

# Fields that decide the shapes of every operator; two configs equal on these profile alike.
SHAPE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "dtype_bytes",
)

META_REQUIRED = ("device", "num_sms", "sm_granularity", "memory_bytes", "model", "date")


class ProfileError(ValueError):
    """A profile directory that cannot be used; the message is one line naming file and fix."""


def empty_samples() -> pd.DataFrame:
    return normalise_samples(pd.DataFrame({c: [] for c in SAMPLE_COLUMNS}))


def normalise_samples(df: pd.DataFrame) -> pd.DataFrame:
    """Cast to the sample schema's dtypes, in the schema's column order (mixed-batch last)."""
    cast = {"s": str, "i": np.int64, "f": np.float64}
    columns = {**SAMPLE_COLUMNS, **_mixed_columns(df)}
    out = pd.DataFrame({c: df[c].astype(cast[k]) for c, k in columns.items()})
    return out.reset_index(drop=True)


def _mixed_columns(df: pd.DataFrame) -> dict[str, str]:
    return {c: k for c, k in MIXED_COLUMNS.items() if c in df.columns}


def check_samples(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise ProfileError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            "re-run `twin profile` to write a complete samples table"
        )
    for col, kind in {**SAMPLE_COLUMNS, **_mixed_columns(df)}.items():
        series = df[col]
        if kind == "s":
            continue
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise ProfileError(f"{path}: column {col!r} must be numeric, found {series.dtype}")
        if series.isna().any() or not np.isfinite(series.to_numpy(dtype=float)).all():
            bad = int((~np.isfinite(series.to_numpy(dtype=float))).sum())
            raise ProfileError(
                f"{path}: column {col!r} has {bad} NaN or infinite value(s); "
                "drop those rows or re-measure them"
            )
    if df["op_class"].isna().any():
        raise ProfileError(f"{path}: column 'op_class' has empty values")
    if len(df) and (df["median_s"] <= 0).any():
        raise ProfileError(f"{path}: column 'median_s' must be positive in every row")
    if len(df) and (df["sms"] <= 0).any():
        raise ProfileError(f"{path}: column 'sms' must be positive in every row")
    return normalise_samples(df)


def write_samples(directory: Path, df: pd.DataFrame) -> Path:
    path = Path(directory) / SAMPLES
    normalise_samples(df).to_parquet(path, index=False)
    return path


def read_samples(directory: Path) -> pd.DataFrame:
    path = Path(directory) / SAMPLES
    if not path.is_file():
        raise ProfileError(f"{path}: missing; a profile directory holds {META}, {SAMPLES}, {FIT}")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise ProfileError(f"{path}: not a readable parquet table ({_first_line(exc)})") from None
    return check_samples(df, path)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ProfileError(f"{path}: missing; a profile directory holds {META}, {SAMPLES}, {FIT}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: unreadable JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a JSON object with the {what}")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a profile")


def write_meta(directory: Path, meta: dict[str, Any]) -> Path:
    return _write_json(Path(directory) / META, {"format": FORMAT_VERSION, **meta})


def read_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META
    meta = _read_json(path, "device and model description")
    missing = [k for k in META_REQUIRED if k not in meta]
    if missing:
        raise ProfileError(f"{path}: missing field(s) {', '.join(missing)}")
    for key in ("num_sms", "sm_granularity", "memory_bytes"):
        value = meta[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ProfileError(f"{path}: field {key!r} must be a positive integer, got {value!r}")
    for key in ("device", "date"):
        if not isinstance(meta[key], str):
            raise ProfileError(f"{path}: field {key!r} must be a string, got {meta[key]!r}")
    if meta["sm_granularity"] > meta["num_sms"]:
        raise ProfileError(
            f"{path}: sm_granularity {meta['sm_granularity']} exceeds num_sms {meta['num_sms']}; "
            "the GPU cannot be split in steps larger than itself"
        )
    meta["model_config"] = model_from_meta(meta["model"], path)
    return meta


def model_from_meta(raw: Any, path: Path) -> ModelConfig:
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: field 'model' must be an object of model config fields")
    known = {f.name for f in fields(ModelConfig)}
    missing = [f.name for f in fields(ModelConfig) if f.name in SHAPE_FIELDS and f.name not in raw]
    if missing or "name" not in raw:
        raise ProfileError(f"{path}: field 'model' lacks {', '.join(missing or ['name'])}")
    try:
        return ModelConfig(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: field 'model' is not a model config ({exc})") from None


def check_same_model(profiled: ModelConfig, asked: ModelConfig, path: Path) -> None:
    """A profile predicts only the shapes it measured: refuse another model's shapes."""
    diffs = [
        f"{f} {getattr(profiled, f)} vs {getattr(asked, f)}"
        for f in SHAPE_FIELDS
        if getattr(profiled, f) != getattr(asked, f)
    ]
    if diffs:
        raise ProfileError(
            f"{path / META}: profiled model {profiled.name!r} differs from the requested "
            f"{asked.name!r} ({'; '.join(diffs[:3])}); profile that model or pass its --model"
        )


def write_fit(directory: Path, fit: dict[str, Any]) -> Path:
    return _write_json(Path(directory) / FIT, {"format": FORMAT_VERSION, **fit})


def read_fit(directory: Path) -> dict[str, Any]:
    path = Path(directory) / FIT
    fit = _read_json(path, "fitted curves")
    for key in ("ops", "hbm_bandwidth", "overhead"):
        if key not in fit:
            raise ProfileError(
                f"{path}: missing field {key!r}; rebuild it with `twin profile --fit-only DIR`"
            )
    if not isinstance(fit["ops"], dict):
        raise ProfileError(f"{path}: field 'ops' must map each operator class to its curves")
    _check_finite(fit, path, "")
    return fit


def _check_finite(value: Any, path: Path, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, path, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, path, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ProfileError(f"{path}: field {where!r} is {value}; refit with --fit-only")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
