"""Each paper's headline experiment as closely as the twin can run it; writes docs/papers.md.

Nexus (arXiv 2507.06608): L20 (datasheet roofline: no tables cover it), Qwen2.5-3B and
Llama-3.1-8B, its four workloads (synthetic lengths matched to its means), Poisson rates;
throughput = the highest rate whose normalized latency (E2E / output tokens) stays under a
limit, at several limits as the paper gives none. DuetServe (arXiv 2511.04791): H100
(measured operator tables), Qwen3-8B and Qwen3-14B, Azure Code / Conversation and Mooncake
lengths with Poisson arrivals; completed throughput, and throughput under its TBT SLO.
Then how each answer moves with each modelled part: SM-curve shape, co-run contention and the
mixed-batch cost (``profiler.mixed``).

Baselines are the registered ``vllm`` and ``sglang`` policies, called by name, so the run
uses whatever those policies are in this build. Saves ``bench/results/papers.json``, writes
``docs/papers.md`` and its plots under ``docs/img/``.

    python bench/papers.py [--workers 2] [--requests 300] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from paper_setups import (
    DUET_TRACES,
    NEXUS_NOTES,
    Variant,
    duet_workload,
    gpu_model,
    mixed_fig4a_slowdown,
    nexus_workload,
)
from papers_report import write_report

from policies import Slo
from twin.experiment import SimConfig, simulate

ROOT = Path(__file__).resolve().parents[1]
SLO = Slo(ttft_s=10.0, tbt_s=0.1, tbt_statistic="mean")  # DuetServe's TBT SLO; TTFT loose
NORM_LIMITS = (0.05, 0.1, 0.2)  # s per output token; Nexus states no limit
ATTAINMENT = 0.9

NEXUS_MODELS = {"qwen2.5-3b": 1.0, "llama-3.1-8b": 0.45}  # model -> rate scale on the L20
NEXUS_RATES = {  # Poisson req/s for Qwen2.5-3B; the paper sweeps 1-4 req/s
    "ldc-synthetic": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0],
    "arxiv-synthetic": [1, 2, 3, 4, 5, 6, 8, 10],
    "sharegpt-synthetic": [8, 16, 24, 32, 40, 48, 64, 80],
    "mixed-synthetic": [1, 2, 3, 4, 5, 6, 8, 10],
}
DUET_MODELS = ("qwen3-8b", "qwen3-14b")
DUET_RATES = {
    "azure-code": [2, 4, 8, 12, 16, 20, 24],
    "azure-conv": [2, 4, 8, 12, 16, 20, 24],
    "mooncake": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0],
}
BASE = Variant()
CURVE_VARIANTS = (
    Variant("compute saturates at 80% of SMs", compute_saturation=0.8),
    Variant("compute saturates at 60% of SMs", compute_saturation=0.6),
    Variant("HBM saturates at 30% of SMs", bandwidth_saturation=0.3),
    Variant("no co-run contention", contention=False),
)
FIXED_K = "duetserve (k = 4)"
MIXED_VALUES = (1.0, 3.0)  # plus the value that reproduces Nexus Fig. 4a


@dataclasses.dataclass(frozen=True)
class Run:
    paper: str
    gpu: str
    model: str
    workload: str
    policy: str
    rate: float
    requests: int
    variant: Variant = BASE
    label: str = ""  # the policy as a table names it (duetserve on TPC masks, say)
    args: tuple[tuple[str, object], ...] = ()  # policy parameters other than the defaults


def run_one(run: Run) -> dict:
    make = nexus_workload if run.paper == "nexus" else duet_workload
    wl = make(run.workload, run.requests, run.rate, seed=0)
    model = gpu_model(run.gpu, run.model, run.variant)
    cfg = SimConfig(policy=run.policy, policy_args=dict(run.args), model=run.model, slo=SLO)
    start = time.perf_counter()
    result = simulate(cfg, workload=wl, latency_model=model)
    rec = result.records
    done = rec[rec["status"] == "finished"]
    s = result.summary
    return {
        **{k: v for k, v in dataclasses.asdict(run).items() if k not in ("variant", "args")},
        "args": dict(run.args),
        "variant": run.variant.name,
        "label": run.label or run.policy,
        "latency_model": model.label,
        "throughput_rps": s["throughput_rps"],
        "normalized_latency_s": float(
            ((done.finish_s - done.arrival_s) / done.output_tokens).mean()
        ),
        "ttft_p90_s": s["ttft_p90_s"],
        "tbt_p90_s": s["tbt_p90_s"],
        "tbt_p99_s": s["tbt_p99_s"],
        "tbt_attainment": s["tbt_attainment"],
        "mean_decode_sms": s["mean_decode_sms"],
        "partition_changes": s["partition_changes"],
        "finished": s["finished"],
        "wall_s": time.perf_counter() - start,
    }


def plan(requests: int, quick: bool) -> list[Run]:
    def rates(grid):
        return grid[::2] if quick else grid

    runs: list[Run] = []
    for model, scale in NEXUS_MODELS.items():
        for wl, grid in NEXUS_RATES.items():
            for policy in ("vllm", "sglang", "nexus"):
                for r in rates(grid):
                    runs.append(Run("nexus", "l20", model, wl, policy, r * scale, requests))
    for model in DUET_MODELS:
        for wl, grid in DUET_RATES.items():
            for policy, gpu, label in (
                ("vllm", "h100", ""),
                ("sglang", "h100", ""),
                ("duetserve", "h100", ""),
                ("duetserve", "h100-tpc", "duetserve (2-SM TPCs)"),
            ):
                for r in rates(grid):
                    runs.append(Run("duetserve", gpu, model, wl, policy, r, requests, label=label))
    fig4a = mixed_fig4a_slowdown(gpu_model("l20", "qwen2.5-3b"))["slowdown"]
    mixed = [Variant(f"mixed-batch slowdown {v:g}", mixed_slowdown=v) for v in MIXED_VALUES]
    mixed.append(Variant(f"mixed-batch slowdown {fig4a:.0f} (Nexus Fig. 4a)", mixed_slowdown=fig4a))
    # Sensitivity, on one model per paper: re-run only the policies a part can change.
    for wl in ("ldc-synthetic", "mixed-synthetic"):
        for r in rates(NEXUS_RATES[wl]):
            for v in CURVE_VARIANTS:
                runs.append(Run("nexus", "l20", "qwen2.5-3b", wl, "nexus", r, requests, v))
            for v in mixed:
                for policy in ("vllm", "sglang"):
                    runs.append(Run("nexus", "l20", "qwen2.5-3b", wl, policy, r, requests, v))
    for wl in ("azure-code", "mooncake"):
        for r in rates(DUET_RATES[wl]):
            for v in CURVE_VARIANTS:
                runs.append(Run("duetserve", "h100", "qwen3-8b", wl, "duetserve", r, requests, v))
            fixed_k = (("lookahead", 4),)  # the look-ahead pinned, as before k joined the search
            runs.append(
                Run(
                    "duetserve",
                    "h100",
                    "qwen3-8b",
                    wl,
                    "duetserve",
                    r,
                    requests,
                    label=FIXED_K,
                    args=fixed_k,
                )
            )
            for v in mixed:
                for policy in ("vllm", "sglang", "duetserve"):
                    runs.append(Run("duetserve", "h100", "qwen3-8b", wl, policy, r, requests, v))
    return runs


# ----------------------------------------------------------------------------- metrics
def highest_rate_under(rows: list[dict], key: str, limit: float) -> tuple[float, str]:
    """Highest offered rate with ``key`` <= limit (interpolated), and how it is bounded."""
    rows = sorted(rows, key=lambda r: r["rate"])
    if not rows or rows[0][key] > limit:
        return (rows[0]["rate"] if rows else 0.0), "below"
    for a, b in zip(rows, rows[1:], strict=False):
        if b[key] > limit:
            frac = (limit - a[key]) / (b[key] - a[key]) if b[key] != a[key] else 0.0
            return a["rate"] + frac * (b["rate"] - a["rate"]), "exact"
    return rows[-1]["rate"], "above"


def throughput_under_slo(rows: list[dict]) -> float:
    ok = [r["throughput_rps"] for r in rows if r["tbt_attainment"] >= ATTAINMENT]
    return max(ok) if ok else 0.0


def group(results: list[dict], **match) -> list[dict]:
    return [r for r in results if all(r[k] == v for k, v in match.items())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--requests", type=int, default=200, help="requests per simulation")
    ap.add_argument("--quick", action="store_true", help="every other rate (a smoke run)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "papers.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "papers.md")
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite the doc from --out's saved results"
    )
    args = ap.parse_args()
    if args.report_only:
        write_report(json.loads(args.out.read_text()), args.doc, args.doc.parent / "img")
        print(f"wrote {args.doc} from {args.out}")
        return
    if args.requests < 20:
        ap.error("--requests must be at least 20 for the metrics to mean anything")

    runs = plan(args.requests, args.quick)
    print(f"{len(runs)} simulations on {args.workers} worker(s)")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        results = list(pool.map(run_one, runs, chunksize=4))
    wall = time.perf_counter() - start
    print(f"done in {wall:.0f} s")
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}",
        "wall_s": wall,
        "workers": args.workers,
        "requests_per_run": args.requests,
        "simulations": len(runs),
        "slo": dataclasses.asdict(SLO),
        "norm_limits_s": NORM_LIMITS,
        "attainment": ATTAINMENT,
        "fig4a": mixed_fig4a_slowdown(gpu_model("l20", "qwen2.5-3b")),
        "workload_notes": NEXUS_NOTES,
        "duet_traces": DUET_TRACES,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, default=_jsonable, separators=(",", ":")) + "\n")
    write_report(report, args.doc, args.doc.parent / "img")
    print(f"wrote {args.out} and {args.doc}")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


if __name__ == "__main__":
    main()
