"""The Nexus and DuetServe papers' setups as the twin can express them: GPUs, models, workloads.

GPUs and latency models. Nexus ran on an NVIDIA L20 48 GB (Ada, sm_89); DuetServe on an
H100 80 GB. ``gpu_model`` takes each from the project's GPU registry (``profiler.gpus``):

- H100 SXM: the default latency model, operator times measured (aiconfigurator-core tables,
  vLLM stack) with SM scaling and co-run contention modelled on top (``profiler.measured``).
  ``h100-tpc`` is the same GPU described with DuetServe's 2-SM TPC masks.
- L20: the registry's datasheet-only entry (92 SMs, 48 GB at 864 GB/s, 119.5 dense bf16
  TFLOP/s), a roofline estimate, as no measured tables cover it. Green contexts on compute
  capability 8.x split SMs in multiples of 2 with at least 4 per group, so the split options
  are 2 SMs apart.

Models: the bundled Hugging Face configs (Qwen2.5-3B, Llama-3.1-8B, Qwen2.5-14B for Nexus;
Qwen3-8B and Qwen3-14B for DuetServe).

Workloads. Nexus's datasets cannot ship, so its four workloads are synthetic length
distributions matched to the means it publishes (named ``*-synthetic``); DuetServe's traces
ship as bundled slices, so their real lengths are used. Arrivals are Poisson at the rate
asked, as both papers run them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

import traces
from policies.batch import BatchShape
from profiler.config import load_model_config
from profiler.datasheet import Datasheet, DatasheetModel
from profiler.gpus import gpu_entry
from profiler.measured import MeasuredModel, ModelledParts
from profiler.mixed import MixedBatchCost
from traces.arrivals import arrival_times
from traces.workload import Workload
from twin.latency import datasheet_for

ADA_MIN_SPLIT_SMS = 4
TPC_SMS = 2  # DuetServe partitions by TPC masks: 2 SMs per step
MEASURED_STACK = "vllm"


# ----------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Variant:
    """One setting of the modelled parts, to see how an answer moves with each.

    ``compute_saturation``: the fraction of SMs past which compute stops speeding up (1.0:
    linear, the datasheet's assumption). ``bandwidth_saturation``: the fraction of SMs that
    saturates HBM. ``contention``: whether co-running lanes share HBM bandwidth.
    ``mixed_slowdown``: the mixed-batch cost (``profiler.mixed``), 0 the sum of parts.
    """

    name: str = "base"
    compute_saturation: float = 1.0
    bandwidth_saturation: float = 0.5
    contention: bool = True
    mixed_slowdown: float = 0.0


class VariantContention:
    """Co-run contention on or off as a ``Variant`` says, for either base latency model."""

    variant: Variant

    def share(self, shape, sms, co_runner, co_sms) -> float:
        return super().share(shape, sms, co_runner, co_sms) if self.variant.contention else 1.0

    def predict_decode_run(self, n_decode, ctx_sum, steps, sms, co_runner=None, co_sms=0, first=0):
        if not self.variant.contention:
            co_runner = None
        return super().predict_decode_run(n_decode, ctx_sum, steps, sms, co_runner, co_sms, first)


class PaperModel(VariantContention, DatasheetModel):
    """A datasheet roofline whose SM curves and contention follow a ``Variant``.

    All SMs with no co-runner reproduce the datasheet exactly; only the shape below full SMs,
    the co-run sharing and the mixed-batch cost change.
    """

    def __init__(self, config, sheet: Datasheet, variant: Variant) -> None:
        sheet = dataclasses.replace(
            sheet, bandwidth_saturation_fraction=variant.bandwidth_saturation
        )
        super().__init__(config, sheet)
        self.variant = variant
        if sheet.sm_granularity == 2 and sheet.name.startswith("L20"):
            self.gpu = dataclasses.replace(self.gpu, min_split_sms=ADA_MIN_SPLIT_SMS)
        if variant.mixed_slowdown:
            self.mixed = MixedBatchCost(variant.mixed_slowdown, f"assumed ({variant.name})")

    def compute_rate(self, op: str, sms: int) -> float:
        s = self.sheet
        knee = self.variant.compute_saturation * s.num_sms
        return s.peak_flops * self._efficiency[op] * min(1.0, min(sms, s.num_sms) / knee)

    @property
    def label(self) -> str:
        return (
            f"{self.sheet.name} roofline (datasheet estimate, not a measurement); modelled: "
            f"{_modelled(self.variant)}"
        )


class MeasuredPaperModel(VariantContention, MeasuredModel):
    """The measured-table model whose SM curves, contention and mixed cost follow a ``Variant``.

    At all SMs with no co-runner it is the measured operators unchanged; only the modelled
    parts move: the compute curve's knee, where HBM saturates, co-run sharing, the mixed cost.
    """

    def __init__(self, config, entry, variant: Variant, sm_granularity: int | None = None):
        parts = ModelledParts(bandwidth_saturation=variant.bandwidth_saturation)
        super().__init__(config, entry, MEASURED_STACK, parts)
        self.variant = variant
        if sm_granularity:
            self.gpu = dataclasses.replace(self.gpu, sm_granularity=sm_granularity)
        if variant.mixed_slowdown:
            self.mixed = MixedBatchCost(variant.mixed_slowdown, f"assumed ({variant.name})")

    def compute_rate(self, op: str, sms: int) -> float:
        if self.variant.compute_saturation == 1.0:
            return super().compute_rate(op, sms)
        return self.entry.bf16_flops / self.compute_scale(sms)

    def compute_scale(self, sms: int) -> float:
        knee = self.variant.compute_saturation * self.gpu.num_sms
        if self.variant.compute_saturation == 1.0:
            return super().compute_scale(sms)
        return 1.0 / min(1.0, min(sms, self.gpu.num_sms) / knee)

    @property
    def label(self) -> str:
        return (
            f"operator times: measured ({self.provenance}; elementwise ops and iteration "
            f"overhead modelled); modelled: {_modelled(self.variant)}"
        )


def _modelled(v: Variant) -> str:
    return (
        f"compute saturates at {v.compute_saturation:.0%} of SMs, HBM at "
        f"{v.bandwidth_saturation:.0%}, co-run contention {'on' if v.contention else 'off'}, "
        f"mixed-batch decode-attention slowdown {v.mixed_slowdown:g}"
    )


def gpu_model(gpu: str, model: str, variant: Variant = Variant()) -> PaperModel | MeasuredModel:
    """``model`` on ``gpu``: its measured tables where the registry has them, else its datasheet.

    ``h100-tpc`` is the H100 with 2-SM split steps (DuetServe's TPC masks).
    """
    config = load_model_config(model)
    entry = gpu_entry("h100" if gpu == "h100-tpc" else gpu)
    granularity = TPC_SMS if gpu == "h100-tpc" else None
    if entry.tables is not None:
        return MeasuredPaperModel(config, entry, variant, granularity)
    sheet = datasheet_for(entry)
    if granularity:
        sheet = dataclasses.replace(sheet, sm_granularity=granularity)
    return PaperModel(config, sheet, variant)


def mixed_fig4a_slowdown(model: PaperModel) -> dict[str, float]:
    """The decode-attention slowdown that reproduces Nexus Fig. 4a's ratios on this model.

    Fig. 4a: a mixed chunked batch ~250 ms, its prefill-only part ~130 ms, decode-only
    ~15 ms. Pick the prefill chunk whose prefill-only time is 130 ms and the decode batch
    (64 requests, context to match) whose decode-only time is 15 ms, then solve
    ``sum of parts + s * t_attn_decode = 250 ms`` for ``s``. All of the excess is put on
    decode attention, so this is an upper end for that part.
    """
    n = model.gpu.num_sms
    q = _solve(lambda t: model.predict(BatchShape.prefill(int(t)), n), 0.130, 16, 65536)
    n_dec = 64
    ctx = _solve(
        lambda c: model.predict(BatchShape.decode(n_dec, int(n_dec * c)), n), 0.015, 1, 1e6
    )
    prefill = BatchShape.prefill(int(q))
    decode = BatchShape.decode(n_dec, int(n_dec * ctx))
    from policies.shapes import merge

    both = merge(prefill, decode)
    parts = sum(model.op_times(both, n).values()) + model.overhead_s(both)
    attn = model.op_times(both, n)["attn_decode"]
    return {
        "prefill_tokens": int(q),
        "decode_requests": n_dec,
        "decode_context": int(ctx),
        "sum_of_parts_s": parts,
        "decode_attention_s": attn,
        "slowdown": max(0.0, (0.250 - parts) / attn),
    }


def _solve(f, target: float, lo: float, hi: float) -> float:
    """``x`` in [lo, hi] with f(x) = target, f increasing (bisection)."""
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


# ----------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class LengthSpec:
    """A lognormal length distribution with a published mean, clipped to a model's context."""

    mean: float
    sigma: float
    low: int = 1
    high: int = 30_000

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma**2 / 2
        return np.clip(np.rint(rng.lognormal(mu, self.sigma, n)), self.low, self.high).astype(int)


# Means from Nexus's workload description (arXiv 2507.06608, section 6); the spreads are ours.
NEXUS_WORKLOADS = {
    "ldc-synthetic": (LengthSpec(5905, 0.5, 256), LengthSpec(200, 0.6, 8, 2048)),
    "arxiv-synthetic": (LengthSpec(3832, 0.45, 256), LengthSpec(200, 0.35, 8, 1024)),
    "sharegpt-synthetic": (LengthSpec(495, 1.0, 4, 8192), LengthSpec(98, 0.9, 1, 2048)),
}
NEXUS_NOTES = {
    "ldc-synthetic": "Long Data Collections: input mean 5,905 (paper); output mean 200 assumed",
    "arxiv-synthetic": "arXiv summarization: 3,832 in / 200 out (paper)",
    "sharegpt-synthetic": "ShareGPT: 495 in / 98 out (paper)",
    "mixed-synthetic": "Mixed: 60% ShareGPT + 40% Long Data Collections (paper)",
}
DUET_TRACES = ("azure-code", "azure-conv", "mooncake")


def nexus_workload(name: str, n: int, rate: float, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    if name == "mixed-synthetic":
        long = rng.random(n) < 0.4
        prompt, output = np.empty(n, int), np.empty(n, int)
        for key, mask in (("ldc-synthetic", long), ("sharegpt-synthetic", ~long)):
            p, o = NEXUS_WORKLOADS[key]
            prompt[mask], output[mask] = p.draw(int(mask.sum()), rng), o.draw(int(mask.sum()), rng)
    else:
        p, o = NEXUS_WORKLOADS[name]
        prompt, output = p.draw(n, rng), o.draw(n, rng)
    return Workload(
        arrival_times(n, rate, seed=seed),
        prompt,
        output,
        name=name,
        source=f"synthetic lengths matched to Nexus's published means ({NEXUS_NOTES[name]})",
        notes={"synthetic": True, "rate_rps": rate},
    )


def duet_workload(name: str, n: int, rate: float, seed: int = 0) -> Workload:
    """The bundled trace's first ``n`` requests' real lengths, with Poisson arrivals."""
    wl = traces.load(name).first(n)
    return Workload(
        arrival_times(len(wl), rate, seed=seed),
        wl.prompt_tokens,
        wl.output_tokens,
        wl.prefix_hashes,
        name=name,
        source=f"{wl.source}: real lengths, Poisson arrivals at {rate:g} req/s",
        notes={"synthetic": False, "rate_rps": rate},
    )
