import numpy as np
import pytest

from policies.batch import BatchShape
from profiler.curves import BANDWIDTH_FORMS, COMPUTE_FORMS, FORMS, check_curve
from profiler.grid import CORUN, GEMM_NAMES, ITERATION, SampleCosts, SweepGrid, plan, sm_counts


def test_per_layer_samples_add_up_to_the_cost_model(llama):
    costs = SampleCosts(llama)
    layers = llama.num_layers
    tokens, rows = 300, 7
    want_f, want_b = costs.cost.gemm(tokens, rows)
    got = [costs.gemm(n, tokens) for n in GEMM_NAMES[:-1]]
    head = costs.gemm("lm_head", rows)
    assert sum(w.flops for w in got) * layers + head.flops == pytest.approx(want_f)
    assert sum(w.bytes for w in got) * layers + head.bytes == pytest.approx(float(want_b))
    # Two RMSNorms and two residual adds per layer, one RoPE and one SiLU-and-mul.
    per_layer = {"rmsnorm": 2, "rope": 1, "silu_mul": 1, "residual": 2}
    f = sum(k * costs.other(n, tokens).flops for n, k in per_layer.items()) * layers
    b = sum(k * costs.other(n, tokens).bytes for n, k in per_layer.items()) * layers
    assert (f, b) == pytest.approx(costs.cost.other(tokens))
    pf, pb = costs.cost.attn_prefill(BatchShape.prefill(512, 1024))
    assert costs.attn_prefill(512, 1024).flops * layers == pytest.approx(pf)
    df, db = costs.cost.attn_decode(16, 16 * 900)
    assert costs.attn_decode(16, 900).bytes * layers == pytest.approx(db)


def test_sm_counts_follow_the_hardware_granularity():
    assert SweepGrid.quick(132, 8).sms == (8, 16, 32, 48, 64, 96, 132)
    full = SweepGrid.full(132, 8).sms
    assert full[0] == 8 and full[-1] == 132 and all(s % 8 == 0 for s in full[:-1])
    assert sm_counts(132, 8, (2, 4, 20), include_all=False) == (16, 32)


def test_the_plan_pairs_every_co_run_with_both_lanes_alone(llama):
    grid = SweepGrid.quick(132, 8)
    rows = plan(llama, grid, 132)
    coruns = [r for r in rows if r["op_class"] == CORUN]
    assert len(coruns) == 2 * len(grid.corun_decode_sms) * len(grid.corun_shapes)
    alone = {
        (r["sms"], r["op_name"], r["chunk"], r["prefix"], r["batch"], r["context"])
        for r in rows
        if r["op_class"] == ITERATION
    }
    for r in coruns:
        if r["op_name"] == "decode":
            key = (r["sms"], "decode", 0, 0, r["batch"], r["context"])
        else:
            key = (r["sms"], "prefill", r["chunk"], r["prefix"], 0, 0)
        assert key in alone
        assert r["sms"] + r["co_sms"] == 132
    assert all(r["flops"] >= 0 and r["bytes"] > 0 for r in rows)


@pytest.mark.parametrize("name", list(FORMS))
def test_every_curve_form_is_positive_and_non_decreasing_within_its_bounds(name):
    form = FORMS[name]
    lo, hi = form.bounds(1e15, 132)
    rng = np.random.default_rng(0)
    s = np.arange(1, 133, dtype=float)
    for _ in range(50):
        x = lo + (hi - lo) * rng.random(len(lo))
        params = form.to_params(x)
        np.testing.assert_allclose(form.to_x(params), x)
        values = form(params, s)
        assert np.all(np.isfinite(values)) and np.all(values > 0)
        assert np.all(np.diff(values) >= -1e-9 * values[1:])
        kind = "compute" if name in COMPUTE_FORMS else "bandwidth"
        assert check_curve({"form": name, "params": params}, kind) is None


def test_check_curve_names_what_is_wrong():
    assert "form among" in check_curve({"form": "cubic", "params": {}}, "compute")
    assert "needs parameters" in check_curve({"form": "exp", "params": {"w_max": 1}}, "bandwidth")
    bad = {"form": "exp", "params": {"w_max": 1.0, "s0": -2.0}}
    assert "positive" in check_curve(bad, "bandwidth")
    assert "exp" in BANDWIDTH_FORMS
