"""The mixed-batch cost: what a batch holding prefill chunks and decodes costs beyond its parts.

Observed: Nexus (arXiv 2507.06608, Fig. 4a) measures a chunked-prefill batch that mixes a
prefill chunk with decodes at about 250 ms where the prefill-only batch takes about 130 ms and
the decode-only batch about 15 ms: far more than the sum of its parts. POD-Attention (Kamath
et al., ASPLOS 2025, arXiv 2410.18038) finds hybrid batches efficient for the linear layers
(the weights are read once) but not for attention, whose kernels are each specialised for one
phase; its fused kernel, overlapping the two phases on each SM, computes hybrid-batch attention
up to 59% faster (mean 28%) than the separately optimised kernels.

Modelled: the physically-there part is attention, so the cost is a slowdown of the batch's
decode attention, ``extra = slowdown * t_attn_decode`` where ``t_attn_decode`` is the latency
model's decode-attention time inside the mixed batch. ``slowdown = 0`` is the plain sum of
parts (what the twin did before, and the default until a GPU measures it); prefill-only and
decode-only batches, and hence split lanes, never pay it.

Measured: ``fit_mixed`` fits ``slowdown`` from mixed-batch sweep samples (a prefill chunk
plus N decodes, timed together and each alone) by least squares on the excess over the sum of
parts; ``twin profile`` stores it in ``fit.json`` under ``mixed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from policies.batch import BatchShape
from policies.shapes import merge
from profiler.profile_io import MIXED_COLUMNS, ProfileError

MIXED_SAMPLES = "mixed_samples.parquet"


class MixedSampleError(ProfileError):
    """Mixed-batch samples that cannot be fitted; one line naming the file, row and column."""


@dataclass(frozen=True)
class MixedBatchCost:
    """``decode_attention_slowdown``: extra decode-attention time, as a multiple of it, paid
    only by batches holding both prefill chunks and decodes."""

    decode_attention_slowdown: float = 0.0
    source: str = "sum of parts (no mixed-batch cost)"

    def __post_init__(self) -> None:
        value = self.decode_attention_slowdown
        if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
            raise ValueError(
                f"decode_attention_slowdown must be a finite number >= 0, got {value!r}"
            )

    @property
    def is_zero(self) -> bool:
        return self.decode_attention_slowdown == 0.0

    def extra_s(self, shape: BatchShape, op_times: dict[str, float]) -> float:
        """Seconds a batch pays beyond its operators' sum (0 unless it mixes the phases)."""
        if self.is_zero or not shape.prefill_q or shape.n_decode == 0:
            return 0.0
        return self.decode_attention_slowdown * op_times["attn_decode"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_fit(entry: Any, path: str = "fit.json") -> MixedBatchCost:
        """The ``mixed`` entry of a fit, or the sum of parts when the profile has none."""
        if entry is None:
            return MixedBatchCost()
        if not isinstance(entry, dict) or "decode_attention_slowdown" not in entry:
            raise MixedSampleError(
                f"{path}: field 'mixed' must hold 'decode_attention_slowdown'; refit it"
            )
        try:
            return MixedBatchCost(
                float(entry["decode_attention_slowdown"]), str(entry.get("source", path))
            )
        except (TypeError, ValueError) as exc:
            raise MixedSampleError(f"{path}: mixed.{exc}") from None


@dataclass(frozen=True)
class MixedFit:
    cost: MixedBatchCost
    samples: int
    mape_sum_of_parts: float  # error of the sum of parts against the measured mixed batches
    mape_fitted: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.cost.to_dict(),
            "samples": self.samples,
            "mape_sum_of_parts": self.mape_sum_of_parts,
            "mape_fitted": self.mape_fitted,
        }


def check_mixed_samples(df: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Every column present, numeric and finite; counts >= 0 and times > 0, or one error."""
    missing = [c for c in MIXED_COLUMNS if c not in df.columns]
    if missing:
        raise MixedSampleError(
            f"{path}: missing column(s) {', '.join(missing)}; a mixed-batch sweep writes "
            f"{', '.join(MIXED_COLUMNS)}"
        )
    if len(df) == 0:
        raise MixedSampleError(f"{path}: no rows; run the mixed-batch sweep first")
    for col in MIXED_COLUMNS:
        series = df[col]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            raise MixedSampleError(f"{path}: column {col!r} must be numeric, found {series.dtype}")
        values = series.to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        bad |= values <= 0 if col.startswith("seconds") else values < 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            need = "a positive time" if col.startswith("seconds") else "a count >= 0"
            raise MixedSampleError(
                f"{path}: row {row}, column {col!r} is {values[row]!r}; it must be {need}"
            )
    if ((df["prefill_tokens"] == 0) | (df["n_decode"] == 0)).all():
        raise MixedSampleError(
            f"{path}: no row mixes a prefill chunk with decodes (prefill_tokens and n_decode > 0)"
        )
    return df.reset_index(drop=True)


def read_mixed_samples(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    try:
        df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except FileNotFoundError:
        raise MixedSampleError(f"{path}: no such file") from None
    except Exception as exc:  # readers raise many unrelated types for a damaged file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MixedSampleError(f"{path}: not a readable table ({first})") from None
    return check_mixed_samples(df, path)


def sample_shapes(row: Any) -> tuple[BatchShape, BatchShape]:
    """(prefill chunk, decode batch) of one sample; each decode attends ``decode_context``."""
    n = int(row.n_decode)
    prefill = (
        BatchShape.prefill(int(row.prefill_tokens), int(row.prefix_tokens))
        if row.prefill_tokens > 0
        else BatchShape()
    )
    decode = BatchShape.decode(n, n * int(row.decode_context)) if n else BatchShape()
    return prefill, decode


def fit_mixed(samples: pd.DataFrame, model: Any, source: str = "mixed-batch sweep") -> MixedFit:
    """Least-squares ``slowdown`` from measured mixed batches against their parts alone.

    The sum of parts is the two alone times less what they count twice (the weights read and
    the fixed overhead of a second iteration), as the latency model predicts that share; the
    excess over it is regressed on the model's decode-attention time in the mixed batch.
    """
    samples = check_mixed_samples(samples, source)
    n = model.gpu.num_sms
    x, y, parts, measured = [], [], [], []
    for row in samples.itertuples(index=False):
        prefill, decode = sample_shapes(row)
        if prefill.is_empty or decode.is_empty:
            continue
        both = merge(prefill, decode)
        shared = model.predict(prefill, n) + model.predict(decode, n) - _sum_of_parts(model, both)
        part = row.seconds_prefill_alone + row.seconds_decode_alone - shared
        x.append(model.op_times(both, n)["attn_decode"])
        y.append(row.seconds_mixed - part)
        parts.append(part)
        measured.append(row.seconds_mixed)
    xa, ya = np.asarray(x), np.asarray(y)
    slowdown = max(0.0, float(xa @ ya / (xa @ xa))) if (xa @ xa) > 0 else 0.0
    pa, ma = np.asarray(parts), np.asarray(measured)
    return MixedFit(
        MixedBatchCost(slowdown, f"fitted from {len(xa)} samples ({source})"),
        len(xa),
        float(np.mean(np.abs(pa - ma) / ma)),
        float(np.mean(np.abs(pa + slowdown * xa - ma) / ma)),
    )


def _sum_of_parts(model: Any, shape: BatchShape) -> float:
    """The model's time for ``shape`` with no mixed-batch cost (operators plus overhead)."""
    return sum(model.op_times(shape, model.gpu.num_sms).values()) + model.overhead_s(shape)


def synthetic_mixed_samples(
    model: Any, slowdown: float, rows: int = 24, noise: float = 0.0, seed: int = 0
) -> pd.DataFrame:
    """Samples a GPU with this ``slowdown`` would give, per the latency model (for tests)."""
    rng = np.random.default_rng(seed)
    n = model.gpu.num_sms
    out = []
    for _ in range(rows):
        q = int(rng.choice([256, 512, 1024, 2048, 4096]))
        ctx = int(rng.choice([0, 1024, 4096]))
        nd = int(rng.choice([4, 16, 32, 64, 128]))
        dc = int(rng.choice([256, 1024, 2048, 8192]))
        prefill, decode = BatchShape.prefill(q, ctx), BatchShape.decode(nd, nd * dc)
        both = merge(prefill, decode)
        mixed = _sum_of_parts(model, both) + slowdown * model.op_times(both, n)["attn_decode"]

        def jitter(t: float) -> float:
            return t * float(1.0 + noise * rng.standard_normal())

        out.append(
            {
                "prefill_tokens": q,
                "prefix_tokens": ctx,
                "n_decode": nd,
                "decode_context": dc,
                "seconds_mixed": jitter(mixed),
                "seconds_prefill_alone": jitter(model.predict(prefill, n)),
                "seconds_decode_alone": jitter(model.predict(decode, n)),
            }
        )
    return pd.DataFrame(out)
