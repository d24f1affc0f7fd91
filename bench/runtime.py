"""How close the real engine comes to the GPU's limits, measured side by side with them.

On one CUDA GPU, with Llama-3.1-8B shapes (random bf16 weights unless --weights is given):

- decode step time against the HBM roofline, (weight bytes + KV bytes read) / the measured
  device-to-device copy bandwidth, over batch 1..256 and context 512..8k (combinations whose
  KV does not fit are skipped and listed);
- prefill throughput against the measured bf16 GEMM peak, over 512..16k tokens;
- the cost of switching a lane between two SM splits (green contexts, when available);
- output tokens/s of each policy replaying azure-conv at several request rates.

Targets (docs/runtime.md): decode >= 85% of the roofline at batch >= 32, prefill >= 70% of
the GEMM peak at >= 2k tokens, a partition switch under 1 ms.

    python bench/runtime.py --out bench/results/runtime.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--weights", default=None, help="local safetensors directory")
    parser.add_argument("--batches", default="1,8,32,64,128,256")
    parser.add_argument("--contexts", default="512,2048,8192")
    parser.add_argument("--prefill", default="512,2048,4096,8192,16384")
    parser.add_argument("--policies", default="vllm,static-split")
    parser.add_argument("--rate-scales", default="1,2,4")
    parser.add_argument("--max-requests", type=int, default=200)
    parser.add_argument(
        "--skip", default="", help="comma list of parts to skip: decode,prefill,switch,policies"
    )
    parser.add_argument("--out", default="bench/results/runtime.json")
    args = parser.parse_args()
    args.device = "cuda"
    try:
        import torch
    except ImportError:
        sys.exit("bench/runtime.py needs torch with CUDA; nothing was measured")
    if not torch.cuda.is_available():
        sys.exit("bench/runtime.py needs a CUDA GPU and none is visible; nothing was measured")

    skip = set(filter(None, args.skip.split(",")))
    results = {"meta": meta(torch, args), "peaks": peaks(torch)}
    torch.cuda.empty_cache()
    print(
        f"{results['meta']['device']}: copy {results['peaks']['copy_bytes_per_s'] / 1e12:.2f} "
        f"TB/s, bf16 GEMM {results['peaks']['gemm_flops_per_s'] / 1e12:.0f} TFLOP/s"
    )
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    if "decode" not in skip:
        results["decode"] = measure_decode(args, ints(args.batches), ints(args.contexts), results)
    if "prefill" not in skip:
        results["prefill"] = measure_prefill(args, ints(args.prefill), results)
    if "switch" not in skip:
        results["switch"] = measure_switch(torch)
    if "policies" not in skip:
        scales = [float(x) for x in args.rate_scales.split(",") if x]
        results["policies"] = measure_policies(args, args.policies.split(","), scales)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"saved {out}")


def meta(torch, args) -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "date": date.today().isoformat(),
        "time": time.strftime("%H:%M:%S"),
        "device": props.name,
        "sms": props.multi_processor_count,
        "memory_bytes": props.total_memory,
        "driver": _driver(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "weights": args.weights or "random",
    }


def _driver() -> str:
    import subprocess

    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 else "unknown"
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def peaks(torch, device: str = "cuda", n: int = 2**30, m: int = 8192) -> dict:
    """Measured device-to-device copy bandwidth and dense bf16 GEMM throughput (random data:
    zeros run faster)."""
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = _time(torch, lambda: dst.copy_(src), reps=20, device=device)
    a = torch.randn(m, m, dtype=torch.bfloat16, device=device)
    b = torch.randn(m, m, dtype=torch.bfloat16, device=device)
    gemm_s = _time(torch, lambda: a @ b, reps=20, device=device)
    return {
        "copy_bytes_per_s": 2 * n / copy_s,
        "gemm_flops_per_s": 2 * m**3 / gemm_s,
        "copy_bytes": n,
        "gemm_size": m,
    }


def _time(torch, fn, reps: int = 10, warmup: int = 3, device: str = "cuda") -> float:
    """Median seconds of ``fn`` on the GPU, by CUDA events (by the host's clock on a CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cpu":
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def _runtime(args, policy: str = "vllm", max_len: int = 16400, **policy_args):
    from gpu_runtime.build import build_runtime
    from gpu_runtime.config import RuntimeConfig

    device = getattr(args, "device", "cuda")
    settings = RuntimeConfig(device=device, weights=args.weights, max_model_len=max_len)
    return build_runtime(args.model, settings, policy, policy_args)


def _weight_bytes_per_step(rt) -> int:
    """Every weight a step reads: all but the embedding table, of which it gathers a few rows."""
    cfg = rt.config
    skip = "" if cfg.tie_word_embeddings else "embed_tokens.weight"
    return sum(
        p.numel() * p.element_size() for n, p in rt.runner.model.named_parameters() if n != skip
    )


def measure_decode(args, batches: list[int], contexts: list[int], results: dict) -> list[dict]:
    import torch

    from gpu_runtime.jobs import Job
    from policies import Batch, Lane, Request

    rt = _runtime(args, max_len=max(contexts) + 16)
    cache, executor = rt.engine.kv, rt.engine.executor
    bandwidth = results["peaks"]["copy_bytes_per_s"]
    weights = _weight_bytes_per_step(rt)
    per_token = rt.config.kv_bytes_per_token
    part = rt.latency.gpu.aggregated()
    rows = []
    for ctx in contexts:
        for n in batches:
            if n * cache.blocks_for(ctx + 1) > cache.num_blocks:
                rows.append({"batch": n, "context": ctx, "skipped": "KV does not fit"})
                continue
            reqs = [Request(i, 0.0, ctx, 2, prompt_ids=[1] * ctx) for i in range(n)]
            by_id = {r.id: Job(r, ignore_eos=True) for r in reqs}
            jobs = {r: by_id[r.id] for r in reqs}
            for r in reqs:
                cache.grow(r.id, ctx + 1)
                r.kv_tokens = ctx
                jobs[r].ids.append(1)
            batch = Batch(decode=reqs)

            def step(batch=batch, jobs=jobs):
                executor.launch(Lane.MIXED, part, batch, cache, jobs.__getitem__).tokens()

            for _ in range(3):
                step()
            _sync(torch)
            t0 = time.perf_counter()
            reps = 20
            for _ in range(reps):
                step()  # each step reads its sampled tokens back, so it ends on the host
            step_s = (time.perf_counter() - t0) / reps
            roofline_s = (weights + n * (ctx + 1) * per_token) / bandwidth
            rows.append(
                {
                    "batch": n,
                    "context": ctx,
                    "step_s": step_s,
                    "roofline_s": roofline_s,
                    "fraction_of_roofline": roofline_s / step_s,
                }
            )
            print(
                f"decode batch {n:4d} ctx {ctx:5d}: {1e3 * step_s:7.2f} ms, roofline "
                f"{1e3 * roofline_s:7.2f} ms -> {100 * roofline_s / step_s:5.1f}%"
            )
            for r in reqs:
                cache.free(r.id)
    del rt
    _sync(torch)
    return rows


def measure_prefill(args, sizes: list[int], results: dict) -> list[dict]:
    import torch

    from gpu_runtime.jobs import Job
    from policies import Batch, BatchShape, PrefillChunk, Request
    from profiler.ops import CostModel

    rt = _runtime(args, max_len=max(sizes) + 16)
    cache, runner = rt.engine.kv, rt.runner
    costs = CostModel(rt.config)
    peak = results["peaks"]["gemm_flops_per_s"]
    sms = rt.latency.gpu.num_sms
    rows = []
    for n in sizes:
        req = Request(0, 0.0, n, 2, prompt_ids=[1] * n)
        job = Job(req, ignore_eos=True)
        cache.grow(0, n)
        batch = Batch(prefill=[PrefillChunk(req, 0, n)])
        seconds = _time(
            torch,
            lambda b=batch, j=job: runner.run(b, cache, lambda r: j, sms),
            5,
            device=rt.device.type,
        )
        cache.free(0)
        flops = sum(costs.costs(BatchShape.prefill(n)).flops.values())
        rows.append(
            {
                "tokens": n,
                "seconds": seconds,
                "flops": flops,
                "flops_per_s": flops / seconds,
                "fraction_of_gemm_peak": flops / seconds / peak,
                "attention_backend": runner.backend,
            }
        )
        print(
            f"prefill {n:6d} tokens: {1e3 * seconds:8.2f} ms, {flops / seconds / 1e12:6.1f} "
            f"TFLOP/s -> {100 * flops / seconds / peak:5.1f}% of the GEMM peak"
        )
    del rt
    _sync(torch)
    return rows


def _sync(torch) -> None:
    """Wait for the GPU and return its cached memory; nothing to wait for on a CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def measure_switch(torch) -> dict:
    """Host-to-completion time of a tiny kernel on a lane, switching splits vs staying."""
    try:
        from profiler.partition import PartitionPool
    except ImportError as exc:
        print(f"partition switch: skipped ({exc})")
        return {"skipped": f"profiler.partition unavailable: {exc}"}
    from gpu_runtime.streams import LaneStreams
    from policies import Lane, Partition

    t0 = time.perf_counter()
    streams = LaneStreams(torch.device("cuda"), PartitionPool())
    splits = [Partition.split(84, 48), Partition.split(68, 64)]
    for part in splits:
        streams.stream(Lane.DECODE, part)
    setup_s = time.perf_counter() - t0
    x = torch.zeros(1024, device="cuda")

    def once(part) -> float:
        start = time.perf_counter()
        with torch.cuda.stream(streams.stream(Lane.DECODE, part)):
            x.add_(1)
            event = torch.cuda.Event()
            event.record()
        event.synchronize()
        return time.perf_counter() - start

    stay = sorted(once(splits[0]) for _ in range(200))[100]
    switch = sorted(once(splits[i % 2]) for i in range(200))[100]
    print(
        f"partition switch: {1e6 * (switch - stay):.1f} us over {1e6 * stay:.1f} us "
        f"(pool set-up {setup_s:.2f} s)"
    )
    return {"stay_s": stay, "switch_s": switch, "switch_cost_s": switch - stay, "setup_s": setup_s}


def measure_policies(args, names: list[str], scales: list[float]) -> list[dict]:
    import torch

    import traces
    from gpu_runtime.replay import replay

    rows = []
    base = traces.load("azure-conv").first(args.max_requests)
    for name in names:
        for scale in scales:
            rt = _runtime(args, policy=name)
            result = replay(rt, base.scale_rate(scale))
            s = result.summary
            rows.append(
                {
                    "policy": name,
                    "rate_scale": scale,
                    **{
                        k: s[k]
                        for k in (
                            "output_tokens_per_s",
                            "throughput_rps",
                            "ttft_p50_s",
                            "ttft_p99_s",
                            "tbt_p50_s",
                            "tbt_p99_s",
                            "preemptions",
                            "wall_s",
                        )
                    },
                }
            )
            print(
                f"{name} at {scale:g}x: {s['output_tokens_per_s']:.0f} output tok/s, "
                f"TTFT p50 {s['ttft_p50_s']:.3f} s, TBT p50 {1e3 * s['tbt_p50_s']:.1f} ms"
            )
            del rt
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
