"""The GPUs ``--gpu`` knows: datasheet facts, how their SMs split, and whether tables cover them.

Bandwidth, memory and tensor-core peaks are the figures aiconfigurator-core 0.12.0 records
for each system (NVIDIA datasheets); SM counts are NVIDIA's published ones. The L20 48 GB,
which the Nexus paper ran on and the measured data lacks, is a datasheet-only entry.

SM splits: green contexts (CUDA 12.4+) split SMs in groups of 8 on compute capability 9.0
and later (Hopper, Blackwell), the granularity Nexus and DuetServe use. Before 9.0 the CUDA
driver's SM-split minimum is 2 SMs (one TPC), so twin allows groups of 2 there; the
runtime's split-SM mechanism has only been checked on Hopper.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.partition import GpuSpec

GREEN_CONTEXT_GROUP = 8
PRE_HOPPER_GROUP = 2


@dataclass(frozen=True)
class GpuEntry:
    key: str
    name: str
    num_sms: int
    sm_version: int
    memory_bytes: int
    hbm_bytes_per_s: float
    bf16_flops: float  # dense tensor-core peak
    fp8_flops: float  # 0 where the part has no fp8 tensor cores
    tables: str | None  # aiconfigurator-core system directory holding measured tables

    @property
    def sm_granularity(self) -> int:
        return GREEN_CONTEXT_GROUP if self.sm_version >= 90 else PRE_HOPPER_GROUP

    @property
    def split_mechanism(self) -> str:
        if self.sm_version >= 90:
            return f"green contexts, groups of {GREEN_CONTEXT_GROUP} SMs"
        return f"SM split in groups of {PRE_HOPPER_GROUP} (pre-sm_90 minimum; unverified)"

    def spec(self) -> GpuSpec:
        return GpuSpec(self.name, self.num_sms, self.sm_granularity, self.memory_bytes)


_GIB = 2**30
GPUS: dict[str, GpuEntry] = {
    e.key: e
    for e in (
        GpuEntry("h100", "H100 SXM", 132, 90, 80 * _GIB, 3.35e12, 989e12, 1978e12, "h100_sxm"),
        GpuEntry("h100-pcie", "H100 PCIe", 114, 90, 80 * _GIB, 2.0e12, 756.5e12, 1513e12, None),
        GpuEntry("h200", "H200 SXM", 132, 90, 151397597184, 4.8e12, 989e12, 1978e12, "h200_sxm"),
        GpuEntry("a100", "A100 SXM", 108, 80, 80 * _GIB, 2.039e12, 312e12, 0.0, "a100_sxm"),
        GpuEntry("a100-pcie", "A100 PCIe", 108, 80, 80 * _GIB, 1.935e12, 312e12, 0.0, None),
        GpuEntry("a30", "A30", 56, 80, 24 * _GIB, 0.933e12, 165e12, 0.0, None),
        GpuEntry("b200", "B200", 148, 100, 193273528320, 7.7e12, 2250e12, 4500e12, "b200_sxm"),
        GpuEntry("b300", "B300", 160, 103, 288400343040, 7.75e12, 2250e12, 4500e12, "b300_sxm"),
        GpuEntry("gb200", "GB200", 148, 100, 198674743296, 8.0e12, 2500e12, 5000e12, "gb200"),
        GpuEntry("gb300", "GB300", 160, 103, 298013687808, 8.0e12, 2500e12, 5000e12, "gb300"),
        GpuEntry("l4", "L4", 58, 89, 24 * _GIB, 0.3e12, 121e12, 242e12, None),
        GpuEntry("l40s", "L40S", 142, 89, 46068 * 2**20, 0.864e12, 362.05e12, 733e12, "l40s"),
        GpuEntry("l20", "L20 48GB", 92, 89, 48 * _GIB, 0.864e12, 119.5e12, 239e12, None),
        GpuEntry(
            "rtx-pro-6000",
            "RTX PRO 6000 Blackwell Server",
            188,
            120,
            102641958912,
            1.792e12,
            467.8e12,
            935.6e12,
            "rtx_pro_6000_server",
        ),
    )
}
ALIASES = {"h100-sxm": "h100", "h200-sxm": "h200", "a100-sxm": "a100", "b200-sxm": "b200",
           "b300-sxm": "b300", "rtx-pro-6000-server": "rtx-pro-6000"}


class UnknownGpu(KeyError):
    pass


def gpu_entry(name: str) -> GpuEntry:
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in GPUS:
        raise UnknownGpu(f"--gpu {name!r} is not known; choose one of: {', '.join(GPUS)}")
    return GPUS[key]
