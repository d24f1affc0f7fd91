"""Paged attention: the torch reference and the Triton kernel against naive attention."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from gpu_runtime.attention import sdpa_chunk  # noqa: E402
from gpu_runtime.kernels.reference import paged_decode_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def paged_case(seed: int = 0, lens=(1, 17, 100, 0, 64, 300), heads=8, kv_heads=2, dim=32, bs=16):
    g = torch.Generator().manual_seed(seed)
    blocks = 60
    k = torch.randn(blocks, bs, kv_heads, dim, generator=g)
    v = torch.randn(blocks, bs, kv_heads, dim, generator=g)
    width = max(1, -(-max(lens) // bs))
    tables = torch.stack([torch.randperm(blocks, generator=g)[:width] for _ in lens]).int()
    q = torch.randn(len(lens), heads, dim, generator=g)
    return q, k, v, tables, torch.tensor(lens, dtype=torch.int32)


def naive_decode(q, k_cache, v_cache, tables, lens, scale):
    n, heads, dim = q.shape
    bs, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros_like(q)
    for i in range(n):
        length = int(lens[i])
        if length == 0:
            continue
        pos = torch.arange(length)
        blocks = tables[i].long()[pos // bs]
        keys, values = k_cache[blocks, pos % bs], v_cache[blocks, pos % bs]
        for h in range(heads):
            kh = h // (heads // kv_heads)
            w = torch.softmax(keys[:, kh] @ q[i, h] * scale, dim=0)
            out[i, h] = w @ values[:, kh]
    return out


def test_reference_paged_decode_matches_naive_attention():
    q, k, v, tables, lens = paged_case()
    scale = 1 / math.sqrt(q.shape[-1])
    got = paged_decode_reference(q, k, v, tables, lens, scale)
    torch.testing.assert_close(got, naive_decode(q, k, v, tables, lens, scale))
    assert torch.all(got[3] == 0)  # a padding row with no context


def test_chunk_attention_sees_its_prefix_and_itself_causally():
    g = torch.Generator().manual_seed(1)
    ctx, q_len, heads, kv_heads, dim = 11, 6, 4, 2, 8
    q = torch.randn(q_len, heads, dim, generator=g)
    keys = torch.randn(ctx + q_len, kv_heads, dim, generator=g)
    values = torch.randn(ctx + q_len, kv_heads, dim, generator=g)
    got = sdpa_chunk(q, keys, values, ctx, 0.5)
    for i in range(q_len):
        for h in range(heads):
            visible = ctx + i + 1
            w = torch.softmax(keys[:visible, h // 2] @ q[i, h] * 0.5, dim=0)
            torch.testing.assert_close(got[i, h], w @ values[:visible, h // 2])


TRITON_CHECK = """
import math, torch
from gpu_runtime.kernels.triton_decode import paged_decode
from gpu_runtime.kernels.reference import paged_decode_reference
from tests.gpu_runtime.test_kernels import paged_case
for heads, kv_heads, dim in ((8, 2, 32), (4, 4, 16), (12, 2, 24)):
    q, k, v, tables, lens = paged_case(3, heads=heads, kv_heads=kv_heads, dim=dim)
    scale = 1 / math.sqrt(dim)
    want = paged_decode_reference(q, k, v, tables, lens, scale)
    for splits in (None, 1, 3):
        got = paged_decode(q, k, v, tables, lens, scale, int(lens.max()), 8, num_splits=splits)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernel_matches_reference_in_the_interpreter():
    """The kernel's own code, run on the CPU by Triton's interpreter (GQA, splits, padding)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", TRITON_CHECK],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
