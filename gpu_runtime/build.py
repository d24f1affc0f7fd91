"""Assemble a runtime from settings: model, weights, KV cache, executor, policy and engine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import policies
from gpu_runtime.attention import pick_backend
from gpu_runtime.clock import VirtualClock, WallClock
from gpu_runtime.config import RuntimeConfig
from gpu_runtime.engine import Engine
from gpu_runtime.executor import SyncExecutor
from gpu_runtime.jobs import Job
from gpu_runtime.kv import PagedKV
from gpu_runtime.model import LlamaModel
from gpu_runtime.runner import ModelRunner
from gpu_runtime.support import check_max_model_len, check_servable, set_cpu_threads
from gpu_runtime.weights import checkpoint_files, init_random, load_safetensors
from policies import Batch, PrefillChunk, Request, Slo
from policies.prefix_cache import make_kv_cache
from profiler.config import ModelConfig, load_model_config
from profiler.model import LatencyModel
from twin.errors import TwinError
from twin.latency import load_latency_model

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class Runtime:
    engine: Engine
    runner: ModelRunner
    config: ModelConfig
    settings: RuntimeConfig
    latency: LatencyModel
    max_model_len: int
    weights: str  # where the weights came from, for config.json and /v1/models

    @property
    def device(self) -> torch.device:
        return self.runner.device


def resolve_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if requested == "cuda":
        raise TwinError("--device cuda: no CUDA device is visible; use --device cpu")
    return torch.device("cpu")


def resolve_weights(model: str | ModelConfig, settings: RuntimeConfig) -> Path | None:
    """The explicit --weights directory, else the --model directory when it holds safetensors."""
    if settings.weights:
        path = Path(settings.weights)
        if not path.is_dir():
            raise TwinError(f"--weights {path}: not a directory of safetensors files")
        return path
    if isinstance(model, str) and Path(model).is_dir() and checkpoint_files(Path(model)):
        return Path(model)
    return None


def build_runtime(
    model: str | ModelConfig,
    settings: RuntimeConfig = RuntimeConfig(),
    policy: str = "vllm",
    policy_args: dict[str, Any] | None = None,
    slo: Slo = Slo(),
    gpu: str = "h100",
    profile: str | None = None,
    virtual_clock: bool = False,
    record_decisions: bool = False,
    random_weights: bool = False,
    stack: str = "vllm",
    latency_kind: str = "measured",
) -> Runtime:
    cfg = model if isinstance(model, ModelConfig) else load_model_config(model)
    check_servable(cfg)
    check_max_model_len(cfg, settings.max_model_len)
    device = resolve_device(settings.device)
    if device.type == "cpu":
        set_cpu_threads(cfg, settings.cpu_threads)
    dtype = _dtype(settings.dtype, device)
    latency = load_latency_model(cfg, gpu, profile, stack, latency_kind)
    pol = policies.get(policy, **(policy_args or {}))
    if getattr(pol, "gpus", 1) != 1:
        raise TwinError(
            f"policy {policy!r} needs {pol.gpus} GPUs; the runtime serves on one, so run it with "
            "`twin simulate` or pick a single-GPU policy"
        )
    max_len = settings.max_model_len or cfg.max_position_embeddings
    _check_host_memory(cfg, dtype, device)
    net = LlamaModel(cfg, max_len, dtype, device)
    source = None if random_weights else resolve_weights(model, settings)
    if source is None:
        init_random(net, settings.seed)
    else:
        load_safetensors(net, source)
    blocks = settings.num_kv_blocks or _kv_blocks(cfg, settings, dtype, device)
    paged = PagedKV.allocate(cfg, blocks, settings.block_size, dtype, device)
    backend = pick_backend(settings.attention, device, settings.block_size)
    runner = ModelRunner(net, paged, backend, settings.seed)
    if device.type == "cpu":
        executor = SyncExecutor(runner)
    else:
        executor = _cuda_executor(runner, settings, max_len, latency)
    clock = VirtualClock(latency) if virtual_clock else WallClock()
    engine = Engine(
        pol,
        executor,
        latency,
        make_kv_cache(pol, blocks, settings.block_size),
        slo,
        clock,
        max_len,
        record_decisions,
    )
    return Runtime(
        engine,
        runner,
        cfg,
        settings,
        latency,
        max_len,
        f"safetensors: {source.name}" if source is not None else f"random (seed {settings.seed})",
    )


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def _check_host_memory(cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
    if device.type != "cpu":
        return
    need = cfg.num_params * torch.empty((), dtype=dtype).element_size()
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > 0.8 * total:
        raise TwinError(
            f"{cfg.name} needs {need / 2**30:.0f} GiB of weights in {dtype} but this machine has "
            f"{total / 2**30:.0f} GiB; use --device cuda or a smaller --model config"
        )


def _kv_blocks(
    cfg: ModelConfig, settings: RuntimeConfig, dtype: torch.dtype, device: torch.device
) -> int:
    per_block = PagedKV.bytes_per_block(cfg, settings.block_size, dtype)
    if device.type == "cpu":
        budget = settings.cpu_kv_bytes
    else:
        free, total = torch.cuda.mem_get_info(device)
        used = total - free
        budget = total * settings.gpu_memory_utilization - used - settings.activation_reserve_bytes
    blocks = int(budget // per_block) - 1  # one block is the scratch block
    if blocks <= 0:
        raise TwinError(
            f"{cfg.name} leaves no memory for the KV cache on {device}; raise "
            "--gpu-memory-utilization, pass --kv-blocks, or pick a smaller model"
        )
    return blocks


def _cuda_executor(runner: ModelRunner, settings: RuntimeConfig, max_len: int, latency):
    from gpu_runtime.executor import CudaExecutor
    from gpu_runtime.graphs import DecodeGraphs
    from gpu_runtime.streams import LaneStreams

    sms = torch.cuda.get_device_properties(runner.device).multi_processor_count
    if sms != latency.gpu.num_sms:
        raise TwinError(
            f"this GPU has {sms} SMs but the latency model describes {latency.gpu.name} with "
            f"{latency.gpu.num_sms}; pass --profile measured on this GPU"
        )
    graphs = None
    if settings.cuda_graphs:
        graphs = DecodeGraphs(runner, settings.graph_batch_sizes, max_len)
    return CudaExecutor(runner, LaneStreams(runner.device), graphs)


def warmup(rt: Runtime, tokens: int = 16) -> None:
    """One prefill and one decode pass before serving: compiles kernels, proves the model runs."""
    kv, runner = rt.engine.kv, rt.runner
    tokens = max(1, min(tokens, rt.max_model_len - 1, kv.capacity_tokens - 1))
    req = Request(-1, 0.0, tokens, 2, prompt_ids=[0] * tokens)
    job = Job(req, ignore_eos=True)
    sms = rt.latency.gpu.num_sms
    kv.grow(req.id, tokens + 1)
    try:
        first = runner.run(Batch(prefill=[PrefillChunk(req, 0, tokens)]), kv, lambda r: job, sms)
        job.ids.append(int(first[0]))
        req.kv_tokens = tokens
        runner.run(Batch(decode=[req]), kv, lambda r: job, sms)
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
    finally:
        kv.free(req.id)
