"""The sweep's kernels and loop, run on a CPU with stand-in partitions and clock.

Times measured here mean nothing; the tests check that every operator runs with the shapes
the runtime uses, that attention computes the right thing, and that the loop fills every row
of the plan with a schema-valid sample.
"""

import time

import numpy as np
import pytest

from profiler.config import ModelConfig
from profiler.grid import SweepGrid, plan
from profiler.profile_io import check_samples

torch = pytest.importorskip("torch")

from profiler.kernels import Kernels  # noqa: E402
from profiler.sweep import Sweep, summarise  # noqa: E402

TINY = ModelConfig(
    name="tiny",
    hidden_size=64,
    intermediate_size=128,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    vocab_size=256,
)


@pytest.fixture(scope="module")
def kernels():
    torch.manual_seed(0)
    k = Kernels(TINY, torch.device("cpu"), layers=2)
    k.flash = None  # the SDPA path, whatever is installed
    return k


def _naive_attention(q, k, v, prefix):
    """q [T, H, D] at positions prefix.., k/v [prefix+T, Hkv, D]; fp32 reference."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1).float(), v.repeat_interleave(group, 1).float()
    scores = torch.einsum("thd,shd->hts", q.float(), k) * q.shape[-1] ** -0.5
    pos_q = prefix + torch.arange(q.shape[0])[:, None]
    scores = scores.masked_fill(torch.arange(k.shape[0])[None, :] > pos_q, float("-inf"))
    return torch.einsum("hts,shd->thd", scores.softmax(-1), v)


@pytest.mark.parametrize("prefix", [0, 24])
def test_prefill_attention_is_causal_at_the_chunk_offset(kernels, prefix):
    q, k, v = kernels._prefill_qkv(8, prefix)
    got = kernels._prefill_attention(q, k, v, prefix).float()
    np.testing.assert_allclose(got, _naive_attention(q, k, v, prefix), atol=3e-2)


def test_grouped_decode_attention_matches_expanded_heads(kernels):
    q, kc, vc = kernels._decode_qkv(3, 20)
    got = kernels._decode_attention(q, kc, vc).float()
    k, v = kc.transpose(1, 2), vc.transpose(1, 2)  # SDPA layout [B, Hkv, T, D] -> [B, T, Hkv, D]
    for b in range(3):
        want = _naive_attention(q[b : b + 1], k[b], v[b], prefix=19)[0]
        np.testing.assert_allclose(got[b], want, atol=3e-2)


def test_every_operator_and_iteration_runs_with_runtime_shapes(kernels):
    for name in ("qkv", "o", "gate_up", "down", "lm_head"):
        out = kernels.gemm(name, 5)()
        assert out.shape == (5, kernels.shapes[name][1])
    for name in ("rmsnorm", "rope", "silu_mul", "residual"):
        kernels.other(name, 6)()
    assert kernels.attention_prefill(8, 4)().shape == (8, TINY.num_heads, TINY.head_dim)
    assert kernels.attention_decode(2, 9)().shape == (2, TINY.num_heads, TINY.head_dim)
    layers, head = kernels.prefill_iteration(12, 8)
    layers()
    assert head().shape == (1, TINY.vocab_size)
    layers, head = kernels.decode_iteration(3, 10)
    layers()
    assert head().shape == (3, TINY.vocab_size)
    kernels.peak(32)()
    kernels.copy(1024)()


class FakePool:
    num_sms = 32

    def stream(self, sms):
        assert sms in (8, 16, 24, 32)
        return None

    def streams(self, prefill_sms, decode_sms):
        assert prefill_sms + decode_sms == self.num_sms
        return None, None


class WallClock:
    """Host timing with the clock interface of ``CudaClock``."""

    def ready(self):
        pass

    def recover(self):
        pass

    def graph(self, fn, stream):
        return fn

    def time(self, segments, weights, stream):
        out = []
        for _ in range(3):
            t = []
            for fn in segments:
                start = time.perf_counter()
                fn()
                t.append(time.perf_counter() - start)
            out.append(sum(w * x for w, x in zip(weights, t, strict=True)))
        return out

    def corun(self, prefill, decode, weights, streams, reps):
        return self.time(prefill, weights, None), self.time(decode, weights, None)


def tiny_grid():
    return SweepGrid(
        sms=(8, 16, 32),
        gemm_tokens=(1, 16),
        head_rows=(1, 4),
        prefill=((16, 0), (8, 8)),
        decode=((2, 16),),
        other_tokens=(4,),
        iter_prefill=((16, 0),),
        iter_decode=((2, 16),),
        corun_decode_sms=(8, 16),
        corun_shapes=((16, 0, 2, 16),),
        peak_n=64,
        copy_bytes=4096,
    )


def test_the_sweep_loop_fills_every_planned_row(kernels):
    grid = tiny_grid()
    progress = []
    sweep = Sweep(TINY, grid, FakePool(), kernels, WallClock())
    df = sweep.run(progress=lambda done, total: progress.append((done, total)))
    assert not sweep.errors
    assert len(df) == len(plan(TINY, grid, 32)) == progress[-1][0] == progress[-1][1]
    checked = check_samples(df, "samples")
    assert (checked["median_s"] > 0).all() and (checked["repeats"] == 3).all()


def test_a_failing_sample_is_skipped_and_recorded(kernels):
    class Broken(WallClock):
        def time(self, segments, weights, stream):
            if len(segments) == 2:  # whole iterations
                raise RuntimeError("out of memory\nmore detail")
            return super().time(segments, weights, stream)

    sweep = Sweep(TINY, tiny_grid(), FakePool(), kernels, Broken())
    df = sweep.run()
    assert "iteration" not in set(df["op_class"])
    assert sweep.errors and "RuntimeError: out of memory" in sweep.errors[0]


def test_summarise_keeps_median_and_spread():
    s = summarise([3.0, 1.0, 2.0, 10.0, 2.5])
    assert s["median_s"] == 2.5 and s["repeats"] == 5
    assert s["p10_s"] < s["median_s"] < s["p90_s"]
