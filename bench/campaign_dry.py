"""What a CPU dry run of ``bench/gpu_campaign.py`` uses in place of the GPU run's inputs: a
two-layer model, a six-request trace and a sweep grid on one whole device."""

from __future__ import annotations

from pathlib import Path

from profiler.grid import SweepGrid

# The whole CPU counts as an H100's or H200's 132 SMs in groups of 8: one partition, but a
# range for the fit and the splits the policies know in the replay.
CPU_UNITS = 132
TINY_MODEL = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
}


def write_dry_trace(path: Path) -> Path:
    """Six short requests arriving within 0.3 s: a replay of seconds on a CPU."""
    rows = [(0.05 * i, 16 + 8 * i, 4 + i % 3) for i in range(6)]
    lines = ["arrival_s,prompt_tokens,output_tokens"] + [f"{a:.2f},{p},{o}" for a, p, o in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def dry_grid() -> SweepGrid:
    """The tiny model's grid on one whole device: at least six samples of every class."""
    return SweepGrid(
        sms=(CPU_UNITS,),
        gemm_tokens=(1, 16),
        head_rows=(1, 4),
        prefill=((16, 0), (8, 8), (32, 0), (16, 16), (24, 0), (8, 24)),
        decode=((1, 16), (2, 16), (4, 8), (2, 32), (8, 8), (1, 64)),
        other_tokens=(4, 16),
        iter_prefill=((16, 0), (32, 0)),
        iter_decode=((2, 16), (4, 8)),
        corun_decode_sms=(),
        corun_shapes=(),
        peak_n=64,
        copy_bytes=1 << 16,
        repeats=3,
        name="dry-run",
    )
