"""Small hand-made workloads for tests."""

import numpy as np


def make_workload(
    n: int = 200,
    rate: float = 4.0,
    seed: int = 0,
    prompt_mean: float = 800,
    output_mean: float = 120,
):
    from traces import Workload

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    arrivals -= arrivals[0]
    prompts = np.maximum(1, rng.lognormal(np.log(prompt_mean), 0.8, n)).astype(np.int64)
    outputs = np.maximum(1, rng.lognormal(np.log(output_mean), 0.8, n)).astype(np.int64)
    return Workload(
        arrival_s=arrivals, prompt_tokens=prompts, output_tokens=outputs, name="synthetic"
    )


# A two-layer Qwen3-style config: the real engine runs it on a CPU in milliseconds a step.
TINY_QWEN3 = {
    "model_type": "qwen3",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
