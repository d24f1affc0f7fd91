"""Per-request records and run metrics, one module for both engines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from policies import Request, Slo, Status
from twin.core.records import ITERATION_COLUMNS, TIMELINE_COLUMNS  # noqa: F401 (the layouts)
from twin.core.token_times import request_token_times, split_times
from twin.core.tokens import TokenLog, TokenStats, token_stats

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
    "reject_reason",  # why a rejected request was refused at arrival; "" otherwise
    "cached_tokens",  # prompt tokens found in the prefix cache at first admission
)
PERCENTILES = (50, 90, 99)


def mean_decode_sms(time_s, mixed_sms, decode_sms) -> float:
    """Time-weighted SMs doing decode work: the decode lane when split, all SMs when not."""
    t = np.asarray(time_s, dtype=float)
    if t.size < 2:
        return math.nan
    sms = (np.asarray(mixed_sms, dtype=float) + np.asarray(decode_sms, dtype=float))[:-1]
    dt = np.diff(t)
    return float((sms * dt).sum() / dt.sum()) if dt.sum() > 0 else float(sms[0])


TOKEN_TIMES_AUTO_MAX = 100_000  # runs of up to this many requests keep token times unasked
# Per-request token statistics records.parquet always carries (token_times_s only when kept).
TOKEN_COLUMNS = ("last_token_s", "tbt_mean_s", "tbt_max_s")
PER_REQUEST_PERCENTILES = ("p90", "p99")  # TBT statistics that need each request's gaps


def keep_token_times(asked: bool | None, requests: int) -> bool:
    """Whether a run keeps every token's time: as asked, else when the run is small enough
    that they cost little (``TOKEN_TIMES_AUTO_MAX``)."""
    return asked if asked is not None else requests <= TOKEN_TIMES_AUTO_MAX


def request_tokens(
    requests: Sequence[Request], log: TokenLog | None = None, statistic: str = "mean"
) -> TokenStats:
    """Token statistics of ``requests``: from the engine's token log, or (without one) from
    each request's own token times."""
    ids = np.fromiter((r.id for r in requests), dtype=np.int64, count=len(requests))
    if log is None:
        log = _times_log(requests, _request_times(requests))
    finished = np.fromiter(
        (r.status is Status.FINISHED for r in requests), dtype=bool, count=len(requests)
    )
    wanted = (statistic,) if statistic in PER_REQUEST_PERCENTILES else ()
    return token_stats(log, ids, finished, wanted)


def _times_log(requests: Sequence[Request], times: list[np.ndarray]) -> TokenLog:
    return TokenLog.from_token_times((r.id for r in requests), times)


def records_frame(
    requests: Sequence[Request], tokens: TokenStats | None = None, token_times: bool = True
) -> pd.DataFrame:
    """One row per request in the schema both engines write to records.parquet: with each
    request's token times when ``token_times``, and always with its token statistics
    (``tokens``, or computed here from ``Request.token_times``). The times come from the
    token log ``tokens`` were computed from, when they were (the engine need not keep them
    per request), else from ``Request.token_times``."""
    requests = list(requests)
    request_id = _plain_column([r.id for r in requests])
    times = None
    if tokens is None:
        times = _request_times(requests)
        tokens = request_tokens(requests, _times_log(requests, times))
    elif token_times:
        times = logged_times(tokens, requests, request_id)
    columns = {
        "request_id": request_id,
        "arrival_s": _plain_column([r.arrival_s for r in requests]),
        "prompt_tokens": _plain_column([r.prompt_tokens for r in requests]),
        "output_tokens": _plain_column([r.output_tokens for r in requests]),
        "first_token_s": _plain_column([r.first_token_s for r in requests]),
        "finish_s": _plain_column([r.finish_s for r in requests]),
        "token_times_s": times if token_times else None,
        "preemptions": _plain_column([r.preemptions for r in requests]),
        "status": [str(r.status) for r in requests],
        "reject_reason": [r.reject_reason for r in requests],
        "cached_tokens": _plain_column([r.cached_tokens for r in requests]),
    }
    columns["last_token_s"] = tokens.last_s
    columns["tbt_mean_s"] = tokens.tbt_mean_s
    columns["tbt_max_s"] = tokens.tbt_max_s
    for name, values in tokens.tbt_percentile_s.items():
        columns[f"tbt_{name}_s"] = values
    present = {k: v for k, v in columns.items() if v is not None}
    return pd.DataFrame(present, columns=list(present))  # built at once: one block a dtype


def _plain_column(values: list) -> np.ndarray | list:
    """``values`` as the int64 or float64 array pandas infers from the list, built by numpy
    (twice as fast as pandas' inference); the list itself when numpy makes anything else."""
    if not values:
        return values
    array = np.array(values)
    return array if array.dtype == np.int64 or array.dtype == np.float64 else values


def logged_times(
    tokens: TokenStats, requests: Sequence[Request], ids: Sequence[int] | None = None
) -> list[np.ndarray]:
    """Each request's token times from the log ``tokens`` came from (``Request.token_times``
    when they came from none); ``ids``: the requests' ids, when known."""
    if tokens.log is None or tokens.request_ids is None:
        return _request_times(requests)
    if ids is None:
        ids = [r.id for r in requests]
    ids = np.asarray(ids, dtype=np.int64)
    if not np.array_equal(ids, tokens.request_ids):
        raise ValueError("records: the token statistics are of other requests than these")
    by_request = tokens.entries_by_request
    return split_times(*request_token_times(tokens.log, ids, by_request, tokens.tokens))


def _request_times(requests: Sequence[Request]) -> list[np.ndarray]:
    """``Request.token_times``, which an engine that leaves them out cannot give."""
    if any(r.generated and not r.token_times for r in requests):
        raise ValueError(
            "records: these requests kept no token times (keep_token_times off); build the "
            "records from the engine's token log (request_tokens(requests, engine.tokens))"
        )
    return [r.token_times_array() for r in requests]


def records_tokens(records: pd.DataFrame, statistic: str = "mean") -> TokenStats:
    """Token statistics from a records table's token times (records.parquet of any run)."""
    if "token_times_s" not in records:
        raise ValueError(
            "these records hold no token times (the run left them out); rerun with "
            "--token-times for statistics over every gap"
        )
    ids = records["request_id"].to_numpy(np.int64)
    log = TokenLog.from_token_times(ids, records["token_times_s"])
    wanted = (statistic,) if statistic in PER_REQUEST_PERCENTILES else ()
    return token_stats(log, ids, (records["status"] == "finished").to_numpy(), wanted)


def judged_tbt(done: pd.DataFrame, statistic: str) -> np.ndarray:
    """Each finished request's TBT statistic the SLO judges (0 without a gap, as no gap
    can miss it)."""
    column = {"mean": "tbt_mean_s", "max": "tbt_max_s"}.get(statistic, f"tbt_{statistic}_s")
    if column in done:
        values = done[column].to_numpy(float)
    else:
        stat = TBT_STATISTICS[statistic]
        gaps = (np.diff(np.asarray(t, dtype=float)) for t in _token_times(done))
        values = np.array([stat(g) if g.size else np.nan for g in gaps], dtype=float)
    return np.where(np.isnan(values), 0.0, values)


def _token_times(records: pd.DataFrame):
    if "token_times_s" not in records:
        raise ValueError(
            "these records hold neither token times nor the TBT statistic the SLO judges; "
            "rerun with --token-times"
        )
    return records["token_times_s"]


def tbt_columns(done: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    if "tbt_mean_s" in done and "tbt_max_s" in done:
        return done["tbt_mean_s"].to_numpy(float), done["tbt_max_s"].to_numpy(float)
    gaps = [np.diff(np.asarray(t, dtype=float)) for t in _token_times(done)]
    mean = [g.mean() if g.size else math.nan for g in gaps]
    largest = [g.max() if g.size else math.nan for g in gaps]
    return np.array(mean, dtype=float), np.array(largest, dtype=float)


def request_metrics(records: pd.DataFrame, slo: Slo) -> pd.DataFrame:
    """Per finished request: TTFT, E2E, TBT statistics and whether it met each SLO."""
    return _finished_metrics(records[records["status"] == "finished"], slo)


def _finished_metrics(done: pd.DataFrame, slo: Slo) -> pd.DataFrame:
    ttft = (done["first_token_s"] - done["arrival_s"]).to_numpy()
    e2e = (done["finish_s"] - done["arrival_s"]).to_numpy()
    if slo.tbt_statistic not in TBT_STATISTICS:
        raise ValueError(
            f"unknown TBT statistic {slo.tbt_statistic!r}; use one of {', '.join(TBT_STATISTICS)}"
        )
    tbt_mean, tbt_max = tbt_columns(done)
    tbt_slo = judged_tbt(done, slo.tbt_statistic)
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
    out["meets_tbt"] = tbt_slo <= slo.tbt_s
    out["meets_slo"] = out["meets_ttft"] & out["meets_tbt"]
    return out


TBT_STATISTICS = {
    "mean": lambda g: float(g.mean()),
    "p90": lambda g: float(np.percentile(g, 90)),
    "p99": lambda g: float(np.percentile(g, 99)),
    "max": lambda g: float(g.max()),
}


def all_gaps(records: pd.DataFrame) -> np.ndarray:
    """Every inter-token gap of every finished request (needs the token times)."""
    done = records[records["status"] == "finished"]
    parts = [np.diff(np.asarray(t, dtype=float)) for t in _token_times(done)]
    return np.concatenate(parts) if parts else np.empty(0)


def summarize(records: pd.DataFrame, slo: Slo, tokens: TokenStats | None = None) -> dict[str, Any]:
    """Run-level metrics: throughput, goodput, SLO attainment and latency percentiles; the
    TBT ones over every gap (``tokens``' multiset, else the records' token times)."""
    done = records[records["status"] == "finished"]
    per = _finished_metrics(done, slo)
    start = float(records["arrival_s"].min()) if len(records) else 0.0
    end = float(done["finish_s"].max()) if len(done) else start
    span = max(end - start, 1e-9)
    rejected = rejection_counts(records)
    # A rejected request was offered and not served: it misses both SLOs.
    judged = len(per) + sum(rejected.values())
    out: dict[str, Any] = {
        "requests": int(len(records)),
        "finished": int(len(done)),
        "rejected": int((records["status"] == "rejected").sum()),
        "rejected_by_reason": rejected,
        "duration_s": span,
        "throughput_rps": len(done) / span,
        "output_tokens_per_s": float(done["output_tokens"].sum()) / span,
        "input_tokens_per_s": float(done["prompt_tokens"].sum()) / span,
        "goodput_rps": float(per["meets_slo"].sum()) / span,
        "slo_attainment": float(per["meets_slo"].sum()) / judged if judged else math.nan,
        "ttft_attainment": float(per["meets_ttft"].sum()) / judged if judged else math.nan,
        "tbt_attainment": float(per["meets_tbt"].sum()) / judged if judged else math.nan,
        "slo_ttft_s": slo.ttft_s,
        "slo_tbt_s": slo.tbt_s,
        "slo_tbt_statistic": slo.tbt_statistic,
        "preemptions": int(records["preemptions"].sum()),
    }
    out.update(percentiles("ttft", per["ttft_s"].to_numpy(float)))
    if tokens is None:  # each gap of the records' token times, once
        out.update(percentiles("tbt", all_gaps(records)))
    else:
        out.update(gap_percentiles("tbt", tokens))
    out.update(percentiles("e2e", per["e2e_s"].to_numpy(float)))
    out.update(percentiles("tpot", per["tbt_mean_s"].dropna().to_numpy(float)))
    return out


def rejection_counts(records: pd.DataFrame) -> dict[str, int]:
    """How many requests were refused at arrival, by reason (runs from before reasons: "")."""
    rejected = records["status"] == "rejected"
    if not rejected.any():
        return {}
    reasons = (
        records.loc[rejected, "reject_reason"]
        if "reject_reason" in records
        else pd.Series("", index=records.index[rejected])
    )
    counts = reasons.fillna("").replace("", "unknown").value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items())}


def percentiles(name: str, values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {f"{name}_mean_s": math.nan, **{f"{name}_p{p}_s": math.nan for p in PERCENTILES}}
    qs = np.percentile(values, PERCENTILES)
    return {
        f"{name}_mean_s": float(values.mean()),
        **{f"{name}_p{p}_s": float(q) for p, q in zip(PERCENTILES, qs, strict=True)},
    }


def gap_percentiles(name: str, tokens: TokenStats) -> dict[str, float]:
    """``percentiles`` of every gap, from the multiset: the same values, without the gaps."""
    if tokens.gap_count == 0:
        return percentiles(name, np.empty(0))
    qs = tokens.gap_percentiles(PERCENTILES)
    return {
        f"{name}_mean_s": tokens.gap_mean(),
        **{f"{name}_p{p}_s": float(q) for p, q in zip(PERCENTILES, qs, strict=True)},
    }
