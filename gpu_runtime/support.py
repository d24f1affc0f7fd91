"""What the real engine implements, checked before a model is built, and CPU thread defaults."""

from __future__ import annotations

import os
import warnings

from profiler.config import ModelConfig
from twin.errors import TwinError

# model_type values whose architecture gpu_runtime.model implements exactly. The simulator
# takes any shape; serving another architecture as Llama would give wrong outputs.
SERVED_MODEL_TYPES = ("llama", "qwen3")

# Below this many parameters a forward pass is too small to share among threads: one thread
# beats several, markedly so on a busy machine.
SMALL_MODEL_PARAMS = 50_000_000


def check_servable(cfg: ModelConfig) -> None:
    if cfg.model_type not in SERVED_MODEL_TYPES:
        raise TwinError(
            f"model type {cfg.model_type!r} ({cfg.name}) is not implemented by twin run, which "
            f"serves {', '.join(SERVED_MODEL_TYPES)}; `twin simulate --model` takes its shape"
        )


def check_max_model_len(cfg: ModelConfig, max_model_len: int | None) -> None:
    if max_model_len is not None and max_model_len > cfg.max_position_embeddings:
        warnings.warn(
            f"--max-model-len {max_model_len} exceeds {cfg.name}'s max_position_embeddings "
            f"({cfg.max_position_embeddings}); positions past it were never trained and "
            "outputs there are unreliable",
            stacklevel=2,
        )


def cpu_threads(cfg: ModelConfig, requested: int | None) -> int:
    """--cpu-threads, else OMP_NUM_THREADS, else 1 for small models and half the cores."""
    if requested is not None:
        if requested < 1:
            raise TwinError("--cpu-threads must be at least 1")
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    if cfg.num_params < SMALL_MODEL_PARAMS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 2) // 2)


def set_cpu_threads(cfg: ModelConfig, requested: int | None) -> int:
    import torch

    threads = cpu_threads(cfg, requested)
    torch.set_num_threads(threads)
    return threads
