"""The measured-table latency model: exact on the tables, monotone between, labelled, total."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from policies.batch import BatchShape
from profiler.gpus import GPUS
from profiler.measured import MeasuredModel
from profiler.tables.lookup import MS, TABLES_DIR, load_tables, manifest
from twin.errors import TwinError
from twin.latency import load_latency_model

H100 = GPUS["h100"]


@pytest.fixture(scope="module")
def tables():
    return load_tables("h100_sxm", "vllm")


@pytest.fixture(scope="module")
def measured(llama):
    return MeasuredModel(llama, H100)


def test_gemm_lookup_is_exact_on_every_measured_point(tables):
    df = tables.gemm
    for n, k in [(4096, 4096), (6144, 4096), (51200, 8192), (128, 65536)]:
        rows = df[(df.n == n) & (df.k == k)]
        curve, how = tables.gemm_curve(n, k)
        assert how == "table" and len(rows) > 50
        for m, t in zip(rows.m, rows.latency, strict=True):
            assert curve(float(m)) == pytest.approx(float(t) * MS, rel=1e-12)


def test_gemm_lookup_is_monotone_between_measured_points_where_the_data_is(tables):
    curve, _ = tables.gemm_curve(4096, 14336)  # interpolated in K between 12288 and 16384
    checked = 0
    for (m0, t0), (m1, t1) in zip(
        zip(curve.x, curve.y, strict=True), zip(curve.x[1:], curve.y[1:], strict=True), strict=False
    ):
        inside = [curve(m) for m in np.linspace(m0, m1, 7)]
        if t1 >= t0:
            assert all(b >= a for a, b in zip(inside, inside[1:], strict=False))
            checked += 1
    assert checked > 30
    # Off-grid N and K land between the measured shapes around them.
    lo, _ = tables.gemm_curve(4096, 12288)
    hi, _ = tables.gemm_curve(4096, 16384)
    for m in (1.0, 64.0, 1000.0, 8192.0):
        assert lo(m) <= curve(m) <= hi(m)


def test_attention_lookups_are_exact_on_grid_points_and_monotone_in_length(tables):
    for df, grid_of, col, offset in (
        (tables.context, tables.context_grid, "isl", 0),
        (tables.generation, tables.generation_grid, "step", 1),
    ):
        grid, how = grid_of(32, 8, 128)
        assert how == "table"
        rows = df[(df.num_heads == 32) & (df.num_key_value_heads == 8) & (df.head_dim == 128)]
        for b, length, t in zip(rows.batch_size, rows[col], rows.latency, strict=True):
            assert grid(float(b), float(length + offset)) == pytest.approx(float(t) * MS, rel=1e-9)
        one = rows[rows.batch_size == 8].sort_values(col)
        lengths, times = one[col].to_numpy() + offset, one.latency.to_numpy()
        for i in range(len(lengths) - 1):
            if times[i + 1] >= times[i]:
                mid = [grid(8.0, x) for x in np.geomspace(lengths[i], lengths[i + 1], 5)]
                assert all(b >= a * (1 - 1e-12) for a, b in zip(mid, mid[1:], strict=False))


def test_all_sms_without_a_co_runner_reproduce_the_measured_operators(measured):
    n = measured.gpu.num_sms
    shapes = [
        BatchShape.decode(1, 900),
        BatchShape.decode(64, 64 * 1500),
        BatchShape(prefill_q=(2048,), prefill_ctx=(0,), sampled=1),
        BatchShape(prefill_q=(512,), prefill_ctx=(3000,), n_decode=20, decode_ctx_sum=30000,
                   sampled=21),
    ]
    for shape in shapes:
        full = measured.full_sm_times(shape)
        assert measured.op_times(shape, n) == pytest.approx(full, rel=1e-12)
        expected = sum(full.values()) + measured.overhead_s(shape)
        assert measured.predict(shape, n) == pytest.approx(expected, rel=1e-12)
        assert measured.predict(shape, n // 2) >= measured.predict(shape, n)
        beside = measured.predict(shape, n // 2, BatchShape.decode(128, 128 * 4000), n // 2)
        assert beside >= measured.predict(shape, n // 2)


def test_a_decode_run_matches_its_iterations_one_by_one(measured):
    run = measured.predict_decode_run(32, 32 * 700, 12, 80)
    one_by_one = [measured.predict(BatchShape.decode(32, 32 * 700 + 32 * j), 80) for j in range(12)]
    assert run == pytest.approx(one_by_one, rel=1e-9)
    co = BatchShape(prefill_q=(4096,), prefill_ctx=(0,), sampled=1)
    run = measured.predict_decode_run(32, 32 * 700, 3, 64, co, 64)
    assert run[0] == pytest.approx(measured.predict(BatchShape.decode(32, 32 * 700), 64, co, 64))


def test_a_mixed_batch_pays_its_mixed_cost_on_all_sms_too(llama):
    from profiler.mixed import MixedBatchCost

    plain, costly = MeasuredModel(llama, H100), MeasuredModel(llama, H100)
    costly.mixed = MixedBatchCost(2.0, "assumed")
    mixed = BatchShape((512,), (0,), n_decode=16, decode_ctx_sum=16 * 900, sampled=17)
    for sms in (132, 64):
        extra = 2.0 * plain.op_times(mixed, sms)["attn_decode"]
        assert costly.predict(mixed, sms) == pytest.approx(plain.predict(mixed, sms) + extra)
    prefill = BatchShape(prefill_q=(512,), prefill_ctx=(0,), sampled=1)
    assert costly.predict(prefill, 132) == plain.predict(prefill, 132)


def test_a_chunk_after_a_prefix_costs_more_than_alone_and_less_than_the_whole(measured):
    alone = measured.full_sm_times(BatchShape(prefill_q=(1024,), prefill_ctx=(0,)))
    after = measured.full_sm_times(BatchShape(prefill_q=(1024,), prefill_ctx=(3072,)))
    whole = measured.full_sm_times(BatchShape(prefill_q=(4096,), prefill_ctx=(0,)))
    assert alone["attn_prefill"] < after["attn_prefill"] < whole["attn_prefill"]


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_every_gpu_entry_loads_and_predicts(llama, gpu):
    entry = GPUS[gpu]
    stacks = sorted(manifest()["gpus"].get(entry.tables or "", {})) or ["vllm"]
    for stack in stacks:
        model = load_latency_model(llama, gpu, stack=stack)
        assert model.gpu.num_sms == entry.num_sms
        assert model.gpu.decode_sm_options(), "a split must exist"
        for shape in (BatchShape.decode(16, 16 * 2000),
                      BatchShape(prefill_q=(3000,), prefill_ctx=(0,), sampled=1)):
            t = model.predict(shape, entry.num_sms)
            assert math.isfinite(t) and 0 < t < 10
        if entry.tables:
            assert model.label.startswith("operator times: measured (aiconfigurator-core")
            assert entry.name in model.label
        else:
            assert "datasheet estimate" in model.label and entry.name in model.label


def test_the_datasheet_flag_keeps_the_old_roofline(llama):
    model = load_latency_model(llama, "h100", latency="datasheet")
    assert type(model).__name__ == "DatasheetModel"
    assert model.label == "H100-SXM5-80GB roofline (datasheet estimate, not a measurement)"


def test_a_model_without_a_table_for_its_shapes_falls_back_and_says_so(llama):
    odd = dataclasses.replace(llama, name="odd-heads", head_dim=80, num_heads=40,
                              num_kv_heads=8, hidden_size=3200, intermediate_size=70000)
    model = MeasuredModel(odd, H100)
    assert "roofline" in model.lookups["attn_prefill"]
    assert "roofline" in model.lookups["attn_decode"]
    assert model.lookups["gemm_gate_up"] == "extrapolated in N or K"
    assert model.describe()["lookups"] == model.lookups
    shape = BatchShape(prefill_q=(700,), prefill_ctx=(0,), n_decode=3, decode_ctx_sum=900,
                       sampled=4)
    times = model.full_sm_times(shape)
    assert times["attn_prefill"] >= odd.num_layers * model.parts.attention_floor_s
    assert all(math.isfinite(v) and v > 0 for v in times.values())
    # Head counts the data lacks at this head dim are scaled from the nearest measured one.
    scaled = MeasuredModel(dataclasses.replace(llama, num_heads=36, num_kv_heads=9), H100)
    assert scaled.lookups["attn_decode"].startswith("scaled from")


def test_an_unknown_stack_or_latency_model_is_a_one_line_error(llama):
    with pytest.raises(TwinError, match="--stack"):
        load_latency_model(llama, "h100", stack="tgi")
    with pytest.raises(TwinError, match="--latency"):
        load_latency_model(llama, "h100", latency="exact")


def test_the_shipped_tables_match_their_manifest():
    m = manifest()
    assert m["source"] == "aiconfigurator-core" and (TABLES_DIR / "NOTICE").is_file()
    for gpu, stacks in m["gpus"].items():
        for stack, info in stacks.items():
            rows = pd.read_parquet(TABLES_DIR / gpu / stack / "gemm.parquet")
            assert len(rows) == info["rows"]["gemm"]
            assert np.isfinite(rows.latency).all() and (rows.latency > 0).all()


def test_labels_reach_summary_json_and_plots(tmp_path, monkeypatch):
    from twin.experiment import SimConfig, simulate, write_run
    from twin.outputs import plots, writer

    titles = []
    for name in ("latency_cdfs", "run_timeline"):
        real = getattr(plots, name)

        def spy(*args, _real=real, **kwargs):
            titles.append(args[2])
            return _real(*args, **kwargs)

        monkeypatch.setattr(writer.plots, name, spy)
    result = simulate(SimConfig(trace="azure-conv", max_requests=40, gpu="h200", stack="sglang"))
    write_run(result, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    label = summary["latency_model"]
    assert label.startswith("operator times: measured (aiconfigurator-core 0.12.0, H200 SXM, "
                            "SGLang 0.5.14")
    assert "SM scaling and contention: modelled" in label
    assert len(titles) == 2 and all(label in t for t in titles)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["stack"] == "sglang" and config["latency_model"]["stack"] == "sglang"

