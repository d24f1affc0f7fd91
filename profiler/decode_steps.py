"""A decode run's steps one at a time in plain floats, bit for bit the vectorised run's.

The simulator predicts a steady decode run only up to its horizon, usually a few steps
away, where numpy's per-call cost on a handful of steps outweighs the work. These give
step j of ``predict_decode_run`` with the same floating-point operations in the same
order (``max`` for ``np.maximum``, ``np.interp``'s own formula in the tables' scalar rows),
so a run predicted either way is the same to the last bit (tests/profiler).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from policies.batch import BatchShape

# Up to this many steps a run is predicted step by step in plain floats even when asked for
# as an array: below it numpy's fixed cost per call is most of the time.
PLAIN_RUN_STEPS = 16

if TYPE_CHECKING:
    from profiler.measured import MeasuredModel
    from profiler.model import LatencyModel


def roofline_steps(
    model: LatencyModel,
    n_decode: int,
    ctx_sum: int,
    sms: int,
    co_runner: BatchShape | None,
    co_sms: int,
) -> Callable[[int], float]:
    """``LatencyModel.predict_decode_run``'s steps: the per-class roofline on ``sms``."""
    alone = co_runner is None or co_runner.is_empty
    if alone:
        return _alone_steps(model, n_decode, ctx_sum, sms)
    c = model.costs
    gf, gb = c.gemm(n_decode, n_decode)
    of, ob = c.other(n_decode)
    flops_per_pair, kv_per_ctx = c.attn_flops_per_pair, c.attn_kv_bytes_per_ctx
    q_bytes = c.attn_q_bytes * n_decode
    overhead = model.decode_overhead_s(n_decode, ctx_sum)
    (g_rate, g_bw), (a_rate, a_bw), (o_rate, o_bw) = (
        model.curves(op, sms) for op in ("gemm", "attn_decode", "other")
    )
    other = model.demand(co_runner, co_sms)[1]
    hbm = model.hbm_bandwidth

    def busy(af: float, ab: float, share: float) -> float:
        c_op, m_op = gf / g_rate, gb / (g_bw * share)
        t = c_op if c_op > m_op else m_op
        c_op, m_op = af / a_rate, ab / (a_bw * share)
        t = t + (c_op if c_op > m_op else m_op)
        c_op, m_op = of / o_rate, ob / (o_bw * share)
        return t + (c_op if c_op > m_op else m_op)

    def step(j: int) -> float:
        ctx = float(ctx_sum + n_decode * j)
        af, ab = flops_per_pair * ctx, q_bytes + kv_per_ctx * ctx
        t = busy(af, ab, 1.0)
        share = hbm / ((gb + ab + ob) / t + other)
        return busy(af, ab, share if share < 1.0 else 1.0) + overhead

    return step


def _alone_steps(
    model: LatencyModel, n_decode: int, ctx_sum: int, sms: int
) -> Callable[[int], float]:
    """``roofline_steps`` with no co-runner: the GEMMs' and the other operators' times do
    not change from step to step, so they are taken once per batch size and SMs (the same
    values, added in the same order as the vectorised run adds them)."""
    consts = model._alone_step_consts
    key = (n_decode, sms)
    hit = consts.get(key)
    if hit is None:
        c = model.costs
        gf, gb = c.gemm(n_decode, n_decode)
        of, ob = c.other(n_decode)
        (g_rate, g_bw), (a_rate, a_bw), (o_rate, o_bw) = (
            model.curves(op, sms) for op in ("gemm", "attn_decode", "other")
        )
        c_op, m_op = gf / g_rate, gb / g_bw
        t_gemm = c_op if c_op > m_op else m_op
        c_op, m_op = of / o_rate, ob / o_bw
        t_other = c_op if c_op > m_op else m_op
        q_bytes = c.attn_q_bytes * n_decode
        hit = consts[key] = (
            t_gemm, t_other, c.attn_flops_per_pair, c.attn_kv_bytes_per_ctx, q_bytes, a_rate,
            a_bw,
        )  # fmt: skip
    t_gemm, t_other, flops_per_pair, kv_per_ctx, q_bytes, a_rate, a_bw = hit
    overhead = model.decode_overhead_s(n_decode, ctx_sum)

    def step(j: int) -> float:
        ctx = float(ctx_sum + n_decode * j)
        c_op, m_op = flops_per_pair * ctx / a_rate, (q_bytes + kv_per_ctx * ctx) / a_bw
        return t_gemm + (c_op if c_op > m_op else m_op) + t_other + overhead

    return step


def measured_steps(
    model: MeasuredModel,
    n_decode: int,
    ctx_sum: int,
    sms: int,
    co_runner: BatchShape | None,
    co_sms: int,
) -> Callable[[int], float] | None:
    """``MeasuredModel.predict_decode_run``'s steps: the measured operators on the whole GPU
    alone, else scaled by the modelled SM and contention curves. None where the attention
    table's row has no plain-float form."""
    kept = model._step_parts.get(n_decode)
    if kept is None:
        kept = _step_parts(model, n_decode)
        if kept is None:
            return None
    attn, fixed = kept
    L = model.config.num_layers
    overhead = model.parts.iteration_overhead_s
    alone = co_runner is None or co_runner.is_empty
    if sms >= model.gpu.num_sms and alone:
        t_fixed = fixed[0]

        def full(j: int) -> float:
            ctx = float(ctx_sum + n_decode * j)
            return t_fixed + L * attn(ctx / n_decode + 1.0) + overhead

        return full

    t_fixed, c_fixed, m_fixed, fixed_bytes, k_fixed = fixed
    costs = model.costs
    flops_per_pair, kv_per_ctx = costs.attn_flops_per_pair, costs.attn_kv_bytes_per_ctx
    q_bytes = costs.attn_q_bytes * n_decode
    peak, bw_peak = model.entry.bf16_flops, model.entry.hbm_bytes_per_s
    scale, frac = model.compute_scale(sms), model.bandwidth_fraction(sms)
    parts = tuple(zip(k_fixed, c_fixed, m_fixed, strict=True))
    other = 0.0 if alone else model.demand(co_runner, co_sms)[1]
    hbm = model.hbm_bandwidth

    def busy(k_attn: float, c_attn: float, m_attn: float, bw: float) -> float:
        c, m = c_attn * scale, m_attn / bw
        t = k_attn * (c if c > m else m)
        for k, c_op, m_op in parts:
            c, m = c_op * scale, m_op / bw
            t = t + k * (c if c > m else m)
        return t

    def step(j: int) -> float:
        ctx = float(ctx_sum + n_decode * j)
        t_attn = L * attn(ctx / n_decode + 1.0)
        ab = q_bytes + kv_per_ctx * ctx
        c_attn, m_attn = flops_per_pair * ctx / peak, ab / bw_peak
        k_attn = t_attn / (c_attn if c_attn > m_attn else m_attn)
        t = busy(k_attn, c_attn, m_attn, frac * 1.0)
        if alone:
            return t + overhead
        share = hbm / ((fixed_bytes + ab) / t + other)
        return busy(k_attn, c_attn, m_attn, frac * (share if share < 1.0 else 1.0)) + overhead

    return step


def _step_parts(model: MeasuredModel, n_decode: int) -> tuple | None:
    """A decode batch's attention row and its GEMM and elementwise parts, which its context
    does not change, kept per batch size; None where the row has no plain-float form."""
    gen = model._gen
    row_scalar = getattr(gen, "row_scalar", None)
    if row_scalar is None:  # no table for the head shape: the roofline floor, a plain function
        attn = functools.partial(gen, n_decode)
    else:
        attn = row_scalar(n_decode)
        if attn is None:
            return None
    fixed = model._decode_fixed.get(n_decode)
    if fixed is None:
        fixed = model._decode_fixed[n_decode] = model._fixed_decode_parts(n_decode)
    known = model._step_parts
    if len(known) >= 1024:
        known.clear()
    parts = known[n_decode] = (attn, fixed)
    return parts
