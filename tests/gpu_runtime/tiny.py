"""Tiny model configs and workloads for runtime tests (CPU, fp32, a few milliseconds a step)."""

import numpy as np

from profiler.config import ModelConfig
from traces import Workload

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def tiny_llama(vocab: int = 256, **overrides) -> ModelConfig:
    fields = dict(
        name="tiny-llama",
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        vocab_size=vocab,
        rope_theta=500000.0,
        rope_scaling=LLAMA3_ROPE,
        max_position_embeddings=4096,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_qwen3(vocab: int = 256, **overrides) -> ModelConfig:
    fields = dict(
        name="tiny-qwen3",
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        vocab_size=vocab,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        qk_norm=True,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        model_type="qwen3",
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def short_trace(n: int = 20, prompt_div: int = 10, max_output: int = 12) -> Workload:
    """The first requests of the bundled Azure conversation trace with shortened lengths."""
    import traces

    wl = traces.load("azure-conv").first(n)
    return Workload(
        wl.arrival_s,
        np.maximum(1, wl.prompt_tokens // prompt_div),
        np.minimum(wl.output_tokens, max_output),
        name="azure-conv-short",
    )
