"""Per-request records and run metrics, one module for both engines."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from policies import Request, Slo

RECORD_COLUMNS = (
    "request_id",
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "first_token_s",
    "finish_s",
    "token_times_s",
    "preemptions",
    "status",
)
PERCENTILES = (50, 90, 99)
# iterations.parquet and the run timeline: one layout for both engines.
ITERATION_COLUMNS = (
    "lane",
    "start_s",
    "end_s",
    "sms",
    "prefill_tokens",
    "prefill_chunks",
    "decode_requests",
    "context_tokens",  # every token attended to: prefill chunks' cache and new tokens, decodes'
    "prefill_context_tokens",  # cached tokens before the prefill chunks (their sum)
    "predicted_s",
    "co_runner",
)
TIMELINE_COLUMNS = (
    "time_s",
    "waiting",
    "running",
    "kv_usage",
    "mixed_sms",
    "prefill_sms",
    "decode_sms",
)


def mean_decode_sms(time_s, mixed_sms, decode_sms) -> float:
    """Time-weighted SMs doing decode work: the decode lane when split, all SMs when not."""
    t = np.asarray(time_s, dtype=float)
    if t.size < 2:
        return math.nan
    sms = (np.asarray(mixed_sms, dtype=float) + np.asarray(decode_sms, dtype=float))[:-1]
    dt = np.diff(t)
    return float((sms * dt).sum() / dt.sum()) if dt.sum() > 0 else float(sms[0])


def records_frame(requests: Iterable[Request]) -> pd.DataFrame:
    """One row per request in the schema both engines write to records.parquet."""
    rows = [
        (
            r.id,
            r.arrival_s,
            r.prompt_tokens,
            r.output_tokens,
            r.first_token_s,
            r.finish_s,
            r.token_times_array(),
            r.preemptions,
            str(r.status),
        )
        for r in requests
    ]
    return pd.DataFrame.from_records(rows, columns=RECORD_COLUMNS)


def request_metrics(records: pd.DataFrame, slo: Slo) -> pd.DataFrame:
    """Per finished request: TTFT, E2E, TBT statistics and whether it met each SLO."""
    done = records[records["status"] == "finished"]
    ttft = (done["first_token_s"] - done["arrival_s"]).to_numpy()
    e2e = (done["finish_s"] - done["arrival_s"]).to_numpy()
    stat = TBT_STATISTICS.get(slo.tbt_statistic)
    if stat is None:
        raise ValueError(
            f"unknown TBT statistic {slo.tbt_statistic!r}; use one of {', '.join(TBT_STATISTICS)}"
        )
    tbt_mean, tbt_max, tbt_slo = [], [], []
    for times in done["token_times_s"]:
        gaps = np.diff(np.asarray(times, dtype=float))
        tbt_mean.append(gaps.mean() if gaps.size else math.nan)
        tbt_max.append(gaps.max() if gaps.size else math.nan)
        tbt_slo.append(stat(gaps) if gaps.size else 0.0)
    out = pd.DataFrame(
        {
            "request_id": done["request_id"].to_numpy(),
            "ttft_s": ttft,
            "e2e_s": e2e,
            "tbt_mean_s": tbt_mean,
            "tbt_max_s": tbt_max,
            "preemptions": done["preemptions"].to_numpy(),
        }
    )
    out["meets_ttft"] = out["ttft_s"] <= slo.ttft_s
    out["meets_tbt"] = np.asarray(tbt_slo) <= slo.tbt_s
    out["meets_slo"] = out["meets_ttft"] & out["meets_tbt"]
    return out


TBT_STATISTICS = {
    "mean": lambda g: float(g.mean()),
    "p90": lambda g: float(np.percentile(g, 90)),
    "p99": lambda g: float(np.percentile(g, 99)),
    "max": lambda g: float(g.max()),
}


def all_gaps(records: pd.DataFrame) -> np.ndarray:
    """Every inter-token gap of every finished request."""
    done = records[records["status"] == "finished"]
    parts = [np.diff(np.asarray(t, dtype=float)) for t in done["token_times_s"]]
    return np.concatenate(parts) if parts else np.empty(0)


def summarize(records: pd.DataFrame, slo: Slo) -> dict[str, Any]:
    """Run-level metrics: throughput, goodput, SLO attainment and latency percentiles."""
    per = request_metrics(records, slo)
    done = records[records["status"] == "finished"]
    start = float(records["arrival_s"].min()) if len(records) else 0.0
    end = float(done["finish_s"].max()) if len(done) else start
    span = max(end - start, 1e-9)
    gaps = all_gaps(records)
    out: dict[str, Any] = {
        "requests": int(len(records)),
        "finished": int(len(done)),
        "rejected": int((records["status"] == "rejected").sum()),
        "duration_s": span,
        "throughput_rps": len(done) / span,
        "output_tokens_per_s": float(done["output_tokens"].sum()) / span,
        "input_tokens_per_s": float(done["prompt_tokens"].sum()) / span,
        "goodput_rps": float(per["meets_slo"].sum()) / span,
        "slo_attainment": float(per["meets_slo"].mean()) if len(per) else math.nan,
        "ttft_attainment": float(per["meets_ttft"].mean()) if len(per) else math.nan,
        "tbt_attainment": float(per["meets_tbt"].mean()) if len(per) else math.nan,
        "slo_ttft_s": slo.ttft_s,
        "slo_tbt_s": slo.tbt_s,
        "slo_tbt_statistic": slo.tbt_statistic,
        "preemptions": int(records["preemptions"].sum()),
    }
    for name, values in (
        ("ttft", per["ttft_s"]),
        ("tbt", gaps),
        ("e2e", per["e2e_s"]),
        ("tpot", per["tbt_mean_s"].dropna()),
    ):
        out.update(percentiles(name, np.asarray(values, dtype=float)))
    return out


def percentiles(name: str, values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {f"{name}_mean_s": math.nan, **{f"{name}_p{p}_s": math.nan for p in PERCENTILES}}
    qs = np.percentile(values, PERCENTILES)
    return {
        f"{name}_mean_s": float(values.mean()),
        **{f"{name}_p{p}_s": float(q) for p, q in zip(PERCENTILES, qs, strict=True)},
    }
