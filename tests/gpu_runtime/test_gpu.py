"""Checks that need a CUDA GPU: the Triton kernel, CUDA graphs, split lanes on green contexts."""

import importlib.util
import math

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

from gpu_runtime.build import build_runtime  # noqa: E402
from gpu_runtime.config import RuntimeConfig  # noqa: E402
from gpu_runtime.kernels.reference import paged_decode_reference  # noqa: E402
from gpu_runtime.replay import replay  # noqa: E402
from tests.gpu_runtime.test_kernels import paged_case  # noqa: E402
from tests.gpu_runtime.tiny import short_trace, tiny_llama  # noqa: E402


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_decode_kernel_matches_reference_on_the_gpu(dtype):
    from gpu_runtime.kernels.triton_decode import paged_decode

    q, k, v, tables, lens = (t.cuda() for t in paged_case(4, heads=32, kv_heads=8, dim=128))
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    scale = 1 / math.sqrt(128)
    want = paged_decode_reference(q, k, v, tables, lens, scale)
    for splits in (None, 1, 7):
        got = paged_decode(q, k, v, tables, lens, scale, int(lens.max()), 132, splits)
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def runtime(policy="vllm", graphs=True, **args):
    settings = RuntimeConfig(
        device="cuda", num_kv_blocks=2048, cuda_graphs=graphs, dtype="float32", attention="triton"
    )
    return build_runtime(tiny_llama(), settings, policy, args, virtual_clock=True)


def test_cuda_graph_decode_gives_the_same_tokens_as_eager():
    wl = short_trace(16, max_output=20).scale_rate(20.0)
    graphed, eager = runtime(graphs=True), runtime(graphs=False)
    replay(graphed, wl)
    replay(eager, wl)
    assert graphed.engine.executor.graphs._graphs  # graphs were captured and replayed
    for rid, job in eager.engine.jobs.items():
        assert graphed.engine.jobs[rid].output_ids == job.output_ids


def test_split_lanes_run_on_green_context_streams():
    pytest.importorskip("profiler.partition")
    rt = runtime("static-split", decode_sms=48)
    result = replay(rt, short_trace(16, max_output=20).scale_rate(20.0))
    assert (result.records["status"] == "finished").all()
    streams = rt.engine.executor.streams
    assert set(result.iterations["lane"]) == {"prefill", "decode"}
    assert streams._pool is not None
    assert rt.engine.kv.free_blocks == rt.engine.kv.num_blocks


def test_cpu_and_gpu_engines_agree_on_greedy_tokens():
    wl = short_trace(8, max_output=10).scale_rate(20.0)
    gpu = runtime()
    cpu = build_runtime(
        tiny_llama(), RuntimeConfig(device="cpu", num_kv_blocks=2048), "vllm", virtual_clock=True
    )
    replay(gpu, wl)
    replay(cpu, wl)
    same = sum(gpu.engine.jobs[r].output_ids == j.output_ids for r, j in cpu.engine.jobs.items())
    assert same >= 7  # fp32 on both; a near-tie in a random model may flip one argmax
