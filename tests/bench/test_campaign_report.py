"""The campaign's figures from GPU-shaped step results (a CPU dry run skips the partition
steps, so their part of the report is checked here on hand-built results)."""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from campaign_report import figures  # noqa: E402
from campaign_steps import corun_slowdowns  # noqa: E402


def _row(op_class, op_name, sms, median_s, co_sms=0, **shape):
    row = dict.fromkeys(("chunk", "prefix", "batch", "context"), 0)
    row.update(op_class=op_class, op_name=op_name, sms=sms, co_sms=co_sms, median_s=median_s)
    row.update(shape)
    return row


def test_corun_slowdowns_compare_each_lane_with_itself_alone_on_its_partition():
    p, d = {"chunk": 2048, "prefix": 0}, {"batch": 64, "context": 1024}
    samples = pd.DataFrame(
        [
            _row("iteration", "prefill", 116, 0.100, **p),
            _row("iteration", "decode", 16, 0.020, **d),
            _row("iteration", "decode", 32, 0.011, **d),  # another partition: not the match
            _row("corun", "prefill", 116, 0.110, co_sms=16, **p, **d),
            _row("corun", "decode", 16, 0.025, co_sms=116, **p, **d),
        ]
    )
    out = corun_slowdowns(samples)
    assert [(s["lane"], s["sms"], s["co_sms"]) for s in out] == [
        ("prefill", 116, 16),
        ("decode", 16, 116),
    ]
    assert abs(out[0]["slowdown"] - 1.1) < 1e-9 and abs(out[1]["slowdown"] - 1.25) < 1e-9


def test_figures_of_a_gpu_run_carry_values_and_targets():
    ok = lambda result: {"status": "ok", "result": result}  # noqa: E731
    summary = {
        "steps": {
            "partitions": ok(
                {"backend": "cuda-python", "splits": 30, "sm_counts": [8, 132],
                 "confinement": 14.0, "confinement_ideal": 16.5}  # fmt: skip
            ),
            "corun": ok(
                {"slowdowns": [{"lane": "decode", "slowdown": 1.3}, {"lane": "decode",
                 "slowdown": 1.1}, {"lane": "prefill", "slowdown": 1.05}]}  # fmt: skip
            ),
            "switch": ok({"switch_cost_us": 12.0, "pool_setup_s": 1.0}),
            "runtime": ok(
                {"decode_fraction_of_roofline_min_at_large_batch": 0.87,
                 "prefill_fraction_of_gemm_peak_min_at_long_prompts": None}  # fmt: skip
            ),
            "sweep": {"status": "timed out", "reason": "interrupted after 110 s"},
        }
    }
    rows = {r["figure"]: (r["value"], r["target"]) for r in figures(summary)}
    assert rows["GEMM speed-up, whole GPU over smallest partition"] == (
        "14.0x",
        "about 16.5x (SM ratio)",
    )
    assert rows["co-run slowdown of the decode lane (median, max)"][0] == "1.20x, 1.30x"
    assert rows["partition switch cost"] == ("12 us", "< 1000 us")
    assert rows["decode share of the HBM roofline, batch >= 32 (worst)"] == ("87.0%", ">= 85%")
    assert rows["prefill share of the GEMM peak, >= 2k tokens (worst)"][0] == "-"
    assert not any("SM-curve" in f for f in rows)  # the profile step did not run
