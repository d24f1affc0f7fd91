"""The papers' setups bench/papers.py runs: GPUs, modelled variants, workloads and metrics."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import paper_setups as ps  # noqa: E402
import papers  # noqa: E402

from policies import BatchShape  # noqa: E402
from policies.shapes import merge  # noqa: E402
from profiler import DatasheetModel, load_model_config  # noqa: E402
from profiler.gpus import gpu_entry  # noqa: E402
from profiler.measured import MeasuredModel  # noqa: E402
from twin.latency import datasheet_for  # noqa: E402

SHAPES = (
    BatchShape.prefill(2048, 1000),
    BatchShape.decode(64, 64 * 3000),
    merge(BatchShape.prefill(512), BatchShape.decode(8, 8000)),
)


def test_the_l20_is_a_labelled_datasheet_estimate_with_ada_split_steps():
    model = ps.gpu_model("l20", "qwen2.5-3b")
    gpu = model.gpu
    assert (gpu.num_sms, gpu.sm_granularity, gpu.min_split_sms) == (92, 2, 4)
    assert gpu.decode_sm_options()[:3] == [4, 6, 8] and gpu.decode_sm_options()[-1] == 88
    assert model.hbm_bandwidth == pytest.approx(864e9 * 0.85)
    assert "datasheet estimate" in model.label and "contention on" in model.label
    assert ps.gpu_model("h100-tpc", "qwen3-8b").gpu.sm_granularity == 2


def test_the_base_variant_is_the_datasheet_model_exactly():
    base = ps.gpu_model("l20", "qwen2.5-3b")
    plain = DatasheetModel(load_model_config("qwen2.5-3b"), datasheet_for(gpu_entry("l20")))
    for shape in SHAPES:
        for sms in (8, 40, 92):
            assert base.predict(shape, sms) == plain.predict(shape, sms)
        assert base.predict(shape, 40, SHAPES[0], 52) == plain.predict(shape, 40, SHAPES[0], 52)


def test_the_h100_runs_on_the_measured_tables_and_says_so():
    model = ps.gpu_model("h100", "qwen3-8b")
    assert model.measured and model.label.startswith("operator times: measured")
    assert "H100" in model.label and "contention on" in model.label
    tpc = ps.gpu_model("h100-tpc", "qwen3-8b")
    assert tpc.measured and (tpc.gpu.num_sms, tpc.gpu.sm_granularity) == (132, 2)


def test_the_h100_base_variant_is_the_measured_model_exactly():
    base = ps.gpu_model("h100", "qwen3-8b")
    plain = MeasuredModel(load_model_config("qwen3-8b"), gpu_entry("h100"))
    for shape in SHAPES:
        for sms in (8, 64, 132):
            assert base.predict(shape, sms) == plain.predict(shape, sms)
        assert base.predict(shape, 64, SHAPES[0], 68) == plain.predict(shape, 64, SHAPES[0], 68)
    for sms in (16, 100):
        runs = base.predict_decode_run(64, 64 * 3000, 4, sms, SHAPES[0], 132 - sms)
        assert np.array_equal(
            runs, plain.predict_decode_run(64, 64 * 3000, 4, sms, SHAPES[0], 132 - sms)
        )


def test_h100_variants_move_only_the_modelled_parts():
    base = ps.gpu_model("h100", "qwen3-8b")
    knee = ps.gpu_model("h100", "qwen3-8b", ps.Variant("k", compute_saturation=0.6))
    prefill, decode = SHAPES[0], SHAPES[1]
    assert knee.predict(prefill, 132) == base.predict(prefill, 132)  # measured, unchanged
    assert knee.predict(prefill, 80) < base.predict(prefill, 80)
    # The vectorised decode run follows the reshaped compute curve as predict does.
    run = knee.predict_decode_run(64, 64 * 3000, 1, 40)
    assert run[0] == pytest.approx(knee.predict(BatchShape.decode(64, 64 * 3000), 40), rel=1e-6)
    free = ps.gpu_model("h100", "qwen3-8b", ps.Variant("c", contention=False))
    big = BatchShape.decode(256, 256 * 8000)
    assert base.predict(decode, 64, big, 68) > base.predict(decode, 64)
    assert free.predict(decode, 64, big, 68) == free.predict(decode, 64)
    costly = ps.gpu_model("h100", "qwen3-8b", ps.Variant("m", mixed_slowdown=3.0))
    mixed = SHAPES[2]
    extra = 3.0 * base.op_times(mixed, 132)["attn_decode"]
    assert costly.predict(mixed, 132) == pytest.approx(base.predict(mixed, 132) + extra)
    assert costly.predict(prefill, 132) == base.predict(prefill, 132)


def test_variants_change_only_what_they_name():
    base = ps.gpu_model("l20", "qwen2.5-3b")
    knee = ps.gpu_model("l20", "qwen2.5-3b", ps.Variant("k", compute_saturation=0.6))
    prefill = SHAPES[0]
    assert knee.predict(prefill, 92) == pytest.approx(base.predict(prefill, 92))
    assert knee.predict(prefill, 56) == pytest.approx(knee.predict(prefill, 92), rel=0.02)
    assert base.predict(prefill, 56) > 1.4 * base.predict(prefill, 92)
    free = ps.gpu_model("l20", "qwen2.5-3b", ps.Variant("c", contention=False))
    decode, big = SHAPES[1], BatchShape.decode(256, 256 * 8000)
    assert base.predict(decode, 46, big, 46) > base.predict(decode, 46)  # it binds here
    assert free.predict(decode, 46, big, 46) == free.predict(decode, 46)
    runs = free.predict_decode_run(64, 64 * 3000, 5, 46, big, 46)
    assert np.allclose(runs, free.predict_decode_run(64, 64 * 3000, 5, 46))
    costly = ps.gpu_model("l20", "qwen2.5-3b", ps.Variant("m", mixed_slowdown=3.0))
    assert costly.predict(SHAPES[2], 92) > base.predict(SHAPES[2], 92)
    assert costly.predict(prefill, 92) == base.predict(prefill, 92)


@pytest.mark.parametrize("name", ["ldc-synthetic", "arxiv-synthetic", "sharegpt-synthetic"])
def test_nexus_workloads_match_the_published_means(name):
    wl = ps.nexus_workload(name, 6000, rate=2.0, seed=1)
    prompt, output = ps.NEXUS_WORKLOADS[name]
    assert wl.prompt_tokens.mean() == pytest.approx(prompt.mean, rel=0.06)
    assert wl.output_tokens.mean() == pytest.approx(output.mean, rel=0.06)
    assert wl.rate() == pytest.approx(2.0, rel=0.05)
    assert wl.notes["synthetic"] and "synthetic" in wl.source and wl.name.endswith("-synthetic")


def test_the_mixed_workload_is_sixty_forty():
    wl = ps.nexus_workload("mixed-synthetic", 6000, rate=1.0)
    expected = 0.6 * 495 + 0.4 * 5905
    assert wl.prompt_tokens.mean() == pytest.approx(expected, rel=0.06)
    assert np.mean(wl.prompt_tokens > 2000) == pytest.approx(0.4, abs=0.05)


def test_duetserve_workloads_keep_the_traces_real_lengths():
    import traces

    wl = ps.duet_workload("azure-code", 300, rate=16.0)
    real = traces.load("azure-code").first(300)
    assert np.array_equal(wl.prompt_tokens, real.prompt_tokens)
    assert np.array_equal(wl.output_tokens, real.output_tokens)
    assert wl.rate() == pytest.approx(16.0, rel=0.2) and not wl.notes["synthetic"]


def test_the_fig4a_slowdown_reproduces_its_three_times():
    model = ps.gpu_model("l20", "qwen2.5-3b")
    f = ps.mixed_fig4a_slowdown(model)
    n = model.gpu.num_sms
    prefill = BatchShape.prefill(f["prefill_tokens"])
    decode = BatchShape.decode(f["decode_requests"], f["decode_requests"] * f["decode_context"])
    assert model.predict(prefill, n) == pytest.approx(0.130, rel=0.01)
    assert model.predict(decode, n) == pytest.approx(0.015, rel=0.01)
    costly = ps.gpu_model("l20", "qwen2.5-3b", ps.Variant("f", mixed_slowdown=f["slowdown"]))
    assert costly.predict(merge(prefill, decode), n) == pytest.approx(0.250, rel=0.01)


def test_highest_rate_under_a_limit_interpolates_and_says_when_it_is_bounded():
    rows = [{"rate": r, "x": v} for r, v in ((1, 0.01), (2, 0.03), (4, 0.07), (8, 0.5))]
    assert papers.highest_rate_under(rows, "x", 0.05) == (3.0, "exact")
    assert papers.highest_rate_under(rows, "x", 0.001) == (1, "below")
    assert papers.highest_rate_under(rows, "x", 1.0) == (8, "above")


def test_one_run_returns_the_metrics_the_report_reads():
    run = papers.Run("nexus", "l20", "qwen2.5-3b", "sharegpt-synthetic", "nexus", 4.0, 30)
    row = papers.run_one(run)
    assert row["finished"] == 30 and row["label"] == "nexus" and row["variant"] == "base"
    assert 0 < row["normalized_latency_s"] < 1 and 0 < row["mean_decode_sms"] < 92
    assert "L20" in row["latency_model"]


def test_the_report_says_which_latency_model_timed_each_paper():
    from papers_text import latency_kind, latency_paragraph

    rows = [
        papers.run_one(
            papers.Run("nexus", "l20", "qwen2.5-3b", "sharegpt-synthetic", "vllm", 4, 20)
        ),
        papers.run_one(papers.Run("duetserve", "h100", "qwen3-8b", "azure-conv", "vllm", 4, 20)),
    ]
    rep = {"results": rows}
    assert latency_kind(rep, "nexus") == "datasheet estimate"
    assert latency_kind(rep, "duetserve") == "measured operator tables"
    text = latency_paragraph(rep)
    assert "L20 runs (nexus) are datasheet estimates" in text
    assert "H100 runs (duetserve) take each operator's time at all SMs from measured" in text
