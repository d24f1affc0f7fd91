"""The campaign's figures, read off its steps' results, against the targets the project set
(docs/runtime.md, docs/validation.md), as ``summary.json`` rows and a printed table."""

from __future__ import annotations

from typing import Any

import numpy as np


def _result(summary: dict[str, Any], step: str) -> dict[str, Any] | None:
    record = summary["steps"].get(step, {})
    return record.get("result") if record.get("status") == "ok" else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def figures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: what, value (text), target (text or ""), the step it came from."""
    rows: list[dict[str, Any]] = []

    def add(step: str, figure: str, value: str, target: str = "") -> None:
        rows.append({"step": step, "figure": figure, "value": value, "target": target})

    if r := _result(summary, "peaks"):
        add("peaks", "copy bandwidth (read + write)", f"{r['copy_TB_per_s']:.2f} TB/s")
        add("peaks", "bf16 GEMM peak (random data)", f"{r['gemm_TFLOP_per_s']:.0f} TFLOP/s")
    if r := _result(summary, "partitions"):
        conf = r.get("confinement")
        add("partitions", "green-context backend", f"{r['backend']} ({r['splits']} splits)")
        if conf is not None:
            add("partitions", "GEMM speed-up, whole GPU over smallest partition",
                f"{conf:.1f}x", f"about {r['confinement_ideal']:.1f}x (SM ratio)")  # fmt: skip
    if r := _result(summary, "profile"):
        for op, cv in r["cv_mape"].items():
            add("profile", f"SM-curve fit CV MAPE: {op}", _pct(cv))
        for op in ("iteration", "corun"):
            if op in r["fit_mape"]:
                add("profile", f"fitted model MAPE on {op} samples", _pct(r["fit_mape"][op]))
        sat = r.get("decode_bandwidth_saturates_at_sms")
        add("profile", "decode attention reaches 95% of its bandwidth at", f"{sat} SMs")
    if r := _result(summary, "corun"):
        for lane in ("prefill", "decode"):
            slow = [s["slowdown"] for s in r.get("slowdowns", []) if s["lane"] == lane]
            if slow:
                add(
                    "corun",
                    f"co-run slowdown of the {lane} lane (median, max)",
                    f"{np.median(slow):.2f}x, {max(slow):.2f}x",
                )
    if (r := _result(summary, "mixed")) and r.get("n"):
        m = r["mixed_over_sum_of_parts"]
        add(
            "mixed",
            "mixed batch over the sum of its parts (median; range)",
            f"{m['median']:.2f}x; {m['min']:.2f}-{m['max']:.2f}x",
        )
        add("mixed", "mixed batch over its prefill alone (median)",
            f"{r['mixed_over_prefill_alone_median']:.2f}x")  # fmt: skip
    if r := _result(summary, "runtime"):
        add("runtime", "decode share of the HBM roofline, batch >= 32 (worst)",
            _pct(r["decode_fraction_of_roofline_min_at_large_batch"]), ">= 85%")  # fmt: skip
        add("runtime", "prefill share of the GEMM peak, >= 2k tokens (worst)",
            _pct(r["prefill_fraction_of_gemm_peak_min_at_long_prompts"]), ">= 70%")  # fmt: skip
    if r := _result(summary, "switch"):
        add("switch", "partition switch cost", f"{r['switch_cost_us']:.0f} us", "< 1000 us")
    if r := _result(summary, "replay"):
        for policy, s in r.items():
            if s.get("goodput_rps") is None:
                add("replay", f"replay of {policy}", str(s.get("status", "no summary")))
                continue
            rel = s.get("goodput_vs_vllm")
            text = f"{s['goodput_rps']:.2f} req/s" + (f" ({rel:.2f}x vllm)" if rel else "")
            add("replay", f"goodput of {policy}", text)
    if r := _result(summary, "validate"):
        targets = {"ttft_p50_s": "5%", "tbt_p50_s": "5%", "ttft_p99_s": "10%", "tbt_p99_s": "10%"}
        for policy, v in r.items():
            if not isinstance(v, dict):
                continue
            add("validate", f"{policy}: per-iteration MAPE, twin vs runtime",
                _pct(v["iteration_mape"]), "<= 3%")  # fmt: skip
            for metric, target in targets.items():
                err = v.get(f"{metric}_error")
                add("validate", f"{policy}: {metric[:-2]} error",
                    "-" if err is None else f"{100 * err:+.1f}%", f"<= {target}")  # fmt: skip
    return rows


def provenance(summary: dict[str, Any]) -> str:
    meta = summary.get("meta", {})
    if summary.get("dry_run"):
        return "CPU dry run with a tiny model: every time below is meaningless"
    return (
        f"measured on {meta.get('device', '?')} {meta.get('date', '?')} (driver "
        f"{meta.get('driver', '?')}, CUDA {meta.get('cuda', '?')}, torch {meta.get('torch')})"
    )


def print_table(summary: dict[str, Any]) -> None:
    rows = summary.get("figures", [])
    print(provenance(summary))
    width = max([len(r["figure"]) for r in rows] + [6])
    print(f"{'figure':<{width}}  {'value':<24}  target")
    for r in rows:
        print(f"{r['figure']:<{width}}  {r['value']:<24}  {r['target']}")
    for name, record in summary["steps"].items():
        if record["status"] != "ok":
            print(f"{name}: {record['status']} ({record.get('reason', '')})")
    if "terminated" in summary:
        print(f"stopped after {list(summary['steps'])[-1]}: {summary['terminated']}")
