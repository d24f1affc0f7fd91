"""Synthetic profiles: samples drawn from known curves with multiplicative noise.

For tests and CI, where no GPU exists: a ground truth written as a ``fit.json``-shaped dict
produces every sample of a sweep grid (through ``FittedModel`` for whole iterations and
co-runs, so the truth is exactly the model family being fitted), and the fit must get the
truth back. Profiles made here say ``synthetic`` in their meta and label.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from policies.partition import GpuSpec
from profiler.config import ModelConfig, load_model_config
from profiler.curves import evaluate
from profiler.fit import predict_rows
from profiler.fitted import FittedModel
from profiler.grid import COPY, PEAK, SweepGrid, plan
from profiler.profile_io import normalise_samples, write_meta, write_samples

H100_LIKE = {
    "device": "H100-like GPU",
    "num_sms": 132,
    "sm_granularity": 8,
    "memory_bytes": 80 * 10**9,
}


def h100_truth() -> dict[str, Any]:
    """Plausible H100 curves (bf16 Llama-3.1-8B shapes), one form per class."""
    peak = {"form": "saturating", "params": {"r_sat": 700e12, "s_sat": 132.0, "decay": 0.0}}
    copy_curve = {"form": "exp", "params": {"w_max": 3.0e12, "s0": 18.0}}

    def ops(compute: dict, bandwidth: dict) -> dict[str, Any]:
        return {"compute": compute, "bandwidth": bandwidth}

    return {
        "ops": {
            "gemm": ops(
                {"form": "power", "params": {"r_inf": 1.5e15, "a": 240.0, "b": 1.05}},
                {"form": "exp", "params": {"w_max": 2.8e12, "s0": 16.0}},
            ),
            "attn_prefill": ops(
                {"form": "saturating", "params": {"r_sat": 420e12, "s_sat": 112.0, "decay": 0.15}},
                {"form": "exp", "params": {"w_max": 2.5e12, "s0": 20.0}},
            ),
            "attn_decode": ops(
                {"form": "amdahl", "params": {"r_inf": 60e12, "a": 100.0}},
                {"form": "linear_sat", "params": {"w_max": 2.6e12, "s_sat": 64.0, "p": 0.9}},
            ),
            "other": ops(
                {"form": "amdahl", "params": {"r_inf": 40e12, "a": 132.0}},
                {"form": "exp", "params": {"w_max": 2.4e12, "s0": 24.0}},
            ),
        },
        "device": {"peak": {"compute": peak}, "copy": {"bandwidth": copy_curve}},
        "copy_bandwidth": 3.0e12,
        "hbm_bandwidth": 3.0e12 * 0.85,
        "corun": {"scale": 0.85},
        "overhead": {"prefill_s": 1.2e-3, "decode_s": 0.6e-3},
    }


def synthetic_meta(
    cfg: ModelConfig, grid: SweepGrid, gpu: dict[str, Any] | None = None, date: str | None = None
) -> dict[str, Any]:
    return {
        **(gpu or H100_LIKE),
        "synthetic": True,
        "driver": None,
        "cuda": None,
        "torch": None,
        "model": cfg.to_dict(),
        "date": date or datetime.now(UTC).strftime("%Y-%m-%d"),
        "grid": grid.to_dict(),
    }


def synthetic_samples(
    cfg: ModelConfig,
    grid: SweepGrid,
    truth: dict[str, Any],
    meta: dict[str, Any],
    noise: float = 0.025,
    seed: int = 0,
) -> pd.DataFrame:
    """Every sample of ``grid`` timed by ``truth``, times lognormal noise of sigma ``noise``."""
    gpu = GpuSpec(meta["device"], meta["num_sms"], meta["sm_granularity"], meta["memory_bytes"])
    model = FittedModel(gpu, cfg, truth, {**meta, "synthetic": True})
    df = pd.DataFrame(plan(cfg, grid, meta["num_sms"]))
    t = predict_rows(model, df)
    sms = df["sms"].to_numpy(float)
    peak = (df["op_class"] == PEAK).to_numpy()
    t[peak] = df["flops"].to_numpy()[peak] / evaluate(truth["device"]["peak"]["compute"], sms[peak])
    cp = (df["op_class"] == COPY).to_numpy()
    t[cp] = df["bytes"].to_numpy()[cp] / evaluate(truth["device"]["copy"]["bandwidth"], sms[cp])
    rng = np.random.default_rng(seed)
    median = t * np.exp(rng.normal(0.0, noise, len(t)))
    spread = np.exp(1.2816 * noise)
    df["median_s"] = median
    df["p10_s"] = median / spread
    df["p90_s"] = median * spread
    df["repeats"] = grid.repeats
    return normalise_samples(df)


def write_synthetic_profile(
    directory: Path,
    cfg: ModelConfig | None = None,
    grid: SweepGrid | None = None,
    truth: dict[str, Any] | None = None,
    noise: float = 0.025,
    seed: int = 0,
    date: str | None = None,
) -> Path:
    """Write ``meta.json`` and ``samples.parquet`` (no fit) for a synthetic H100-like GPU."""
    cfg = cfg or load_model_config("llama-3.1-8b")
    grid = grid or SweepGrid.quick(H100_LIKE["num_sms"], H100_LIKE["sm_granularity"])
    truth = copy.deepcopy(truth or h100_truth())
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = synthetic_meta(cfg, grid, date=date)
    write_meta(directory, meta)
    write_samples(directory, synthetic_samples(cfg, grid, truth, meta, noise, seed))
    return directory
