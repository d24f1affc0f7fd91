"""A roofline latency model built from an H100 SXM datasheet, until a measured profile exists.

Compute scales linearly with SMs; HBM bandwidth grows with SMs until a fraction of them
saturates it (decode gains little past that point, the diminishing return Nexus measures).
The efficiencies are assumptions, which is why every report made with this model says it is
a datasheet estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from policies.batch import BatchShape
from policies.partition import GpuSpec
from profiler.config import ModelConfig
from profiler.model import LatencyModel


@dataclass(frozen=True)
class Datasheet:
    name: str = "H100-SXM5-80GB"
    num_sms: int = 132
    sm_granularity: int = 8
    memory_bytes: int = 80 * 10**9
    peak_flops: float = 989e12  # dense bf16 tensor-core FLOP/s
    hbm_bytes_per_s: float = 3.35e12
    gemm_efficiency: float = 0.75
    attention_efficiency: float = 0.55
    elementwise_flops_fraction: float = 0.05  # elementwise ops run on CUDA cores, not tensor cores
    bandwidth_efficiency: float = 0.85
    bandwidth_saturation_fraction: float = 0.5  # share of SMs that saturates HBM
    iteration_overhead_s: float = 1.5e-3

    def gpu(self) -> GpuSpec:
        return GpuSpec(self.name, self.num_sms, self.sm_granularity, self.memory_bytes)


H100_SXM = Datasheet()
GPUS = {"h100": H100_SXM, "h100-sxm": H100_SXM}


class DatasheetModel(LatencyModel):
    def __init__(self, config: ModelConfig, sheet: Datasheet = H100_SXM) -> None:
        super().__init__(sheet.gpu(), config, source=f"{sheet.name} roofline", measured=False)
        self.sheet = sheet
        self._efficiency = {
            "gemm": sheet.gemm_efficiency,
            "attn_prefill": sheet.attention_efficiency,
            "attn_decode": sheet.attention_efficiency,
            "other": sheet.elementwise_flops_fraction,
        }

    def compute_rate(self, op: str, sms: int) -> float:
        s = self.sheet
        return s.peak_flops * self._efficiency[op] * min(sms, s.num_sms) / s.num_sms

    def bandwidth(self, op: str, sms: int) -> float:
        s = self.sheet
        saturating = s.bandwidth_saturation_fraction * s.num_sms
        return self.hbm_bandwidth * min(1.0, sms / saturating)

    @property
    def hbm_bandwidth(self) -> float:
        return self.sheet.hbm_bytes_per_s * self.sheet.bandwidth_efficiency

    def overhead_s(self, shape: BatchShape) -> float:
        return self.sheet.iteration_overhead_s

    def decode_overhead_s(self, n_decode: int, ctx_sum: int) -> float:
        return self.sheet.iteration_overhead_s

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "datasheet": asdict(self.sheet)}
