"""Settings of the real engine, one dataclass mapped one to one onto ``twin run`` flags."""

from __future__ import annotations

from dataclasses import dataclass

from policies.numbers import check_fields
from twin.errors import TwinError

FLAGS = {"num_kv_blocks": "--kv-blocks"}


def as_flag(field_name: str) -> str:
    return FLAGS.get(field_name, "--" + field_name.replace("_", "-"))


DEFAULT_GRAPH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bfloat16 on cuda, float32 on cpu) | bfloat16 | float16 | float32
    seed: int = 0
    weights: str | None = None  # local safetensors directory; random weights when None
    block_size: int = 16
    num_kv_blocks: int | None = None  # overrides the count derived from memory
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes: int = 4 * 2**30
    cpu_kv_bytes: int = 256 * 2**20  # KV budget on a CPU when num_kv_blocks is not given
    max_model_len: int | None = None  # prompt + output limit; default: the model's positions
    attention: str = "auto"  # auto | torch | triton | flash
    cuda_graphs: bool = True
    cpu_threads: int | None = None  # torch threads on a CPU; None: see gpu_runtime.support
    graph_batch_sizes: tuple[int, ...] = DEFAULT_GRAPH_SIZES

    def __post_init__(self) -> None:
        check_fields(self, TwinError, as_flag)
        checks = (
            (self.device in ("auto", "cpu", "cuda"), "--device must be auto, cpu or cuda"),
            (
                self.dtype in ("auto", "bfloat16", "float16", "float32"),
                "--dtype must be auto, bfloat16, float16 or float32",
            ),
            (self.block_size > 0, "--block-size must be positive"),
            (0 <= self.seed < 2**63, "--seed must be in [0, 2**63)"),
            (
                self.num_kv_blocks is None or self.num_kv_blocks > 0,
                "--kv-blocks must be positive",
            ),
            (
                0.0 < self.gpu_memory_utilization <= 1.0,
                "--gpu-memory-utilization must be in (0, 1]",
            ),
            (
                self.attention in ("auto", "torch", "triton", "flash"),
                "--attention must be auto, torch, triton or flash",
            ),
            (
                self.max_model_len is None or self.max_model_len > 1,
                "--max-model-len must be at least 2",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise TwinError(message)
