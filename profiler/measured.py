"""The default latency model: operator times measured on real GPUs, SM effects modelled on top.

At all SMs with no co-runner an iteration costs what the stack's kernels measured (the
aiconfigurator-core tables, see ``profiler/tables``): GEMMs over all the batch's tokens
(qkv, o, gate_up, down per layer, the lm_head over the sampled rows), prefill attention per
chunk, decode attention over the decoding requests, plus modelled elementwise kernels and a
per-iteration overhead. A mixed chunked-prefill + decode batch is these operators summed, as
aiconfigurator's mixed step sums them.

No public data measures these kernels on part of a GPU or beside a co-running kernel, so SM
scaling and HBM contention stay the roofline forms of the datasheet model, applied as a
per-shape efficiency: an operator class with measured time ``T`` and roofline times ``c``
(FLOPs / peak) and ``m`` (bytes / peak bandwidth) takes ``T / max(c, m) * max(c * N / s,
m / (bw(s) * share))`` on ``s`` of ``N`` SMs, which is exactly ``T`` at ``s = N``,
``share = 1``. Compute scales with SMs; bandwidth saturates at ``bandwidth_saturation`` of
the SMs (Nexus, arXiv 2507.06608 §3: decode gains little past a fraction of the SMs);
co-runners share HBM proportionally to their demand. A ``twin profile`` fit replaces these.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from policies.batch import BatchShape
from profiler.config import ModelConfig
from profiler.decode_steps import measured_steps
from profiler.gpus import GpuEntry
from profiler.model import LatencyModel
from profiler.ops import OP_CLASSES
from profiler.tables.lookup import Curve, NoTable, OperatorTables, load_tables

STACKS = {"vllm": "vLLM", "sglang": "SGLang", "trtllm": "TRT-LLM"}
_PART_CACHE = 1 << 16  # entries of a per-part cache before it starts over


@dataclass(frozen=True)
class ModelledParts:
    """The parts no table measures, each a stated assumption."""

    # Elementwise kernels per layer: two fused add+RMSNorms, RoPE, SiLU-and-mul, KV write.
    elementwise_kernels_per_layer: int = 5
    # aiconfigurator-core's memory-op form: a 3 us floor per kernel, 0.8 of peak bandwidth.
    elementwise_floor_s: float = 3e-6
    elementwise_bandwidth_fraction: float = 0.8
    # Sampling, scheduling and launch gaps per iteration (CUDA-graph decode).
    iteration_overhead_s: float = 0.5e-3
    bandwidth_saturation: float = 0.5  # fraction of the SMs that saturates HBM
    achievable_bandwidth_fraction: float = 0.9  # of peak, shared by co-running lanes
    attention_floor_s: float = 11e-6  # per attention call, where no table has the shape


class MeasuredModel(LatencyModel):
    def __init__(
        self,
        config: ModelConfig,
        entry: GpuEntry,
        stack: str = "vllm",
        parts: ModelledParts | None = None,
        tables: OperatorTables | None = None,
    ) -> None:
        if entry.tables is None:
            raise NoTable(f"{entry.name} has no measured tables")
        self.tables = tables or load_tables(entry.tables, stack)
        self.entry, self.stack = entry, stack
        self.parts = parts or ModelledParts()
        src = self.tables.source
        self.provenance = f"{src.package}, {entry.name}, {STACKS.get(stack, stack)} {src.version}"
        super().__init__(entry.spec(), config, source=self.provenance, measured=True)
        self.lookups: dict[str, str] = {}
        self._build(config)
        self._caches()

    def _caches(self) -> None:
        self._full = functools.lru_cache(maxsize=4096)(self._full_sm)
        self._eff = functools.lru_cache(maxsize=4096)(self._efficiencies)
        self._decode_fixed: dict[int, tuple[float, ...]] = {}
        self._step_parts: dict[int, tuple] = {}  # by batch size (profiler.decode_steps)
        # Arrivals bring new shapes at every decision, but their parts repeat: a prompt's
        # chunk, a token count. Kept by their exact inputs.
        self._chunk_s: dict[tuple[int, int], float] = {}  # one chunk's layer, by (q, cached)
        self._layers_s: dict[int, float] = {}  # every layer's GEMMs, by tokens
        self._head_s: dict[int, float] = {}  # the lm_head, by sampled rows

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        kept = ("_full", "_eff", "_decode_fixed", "_step_parts", "_chunk_s", "_layers_s", "_head_s")
        for name in kept:
            del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._caches()

    # Tables for this model's shapes, built once ----------------------------------------
    def _build(self, cfg: ModelConfig) -> None:
        h, L = cfg.hidden_size, cfg.num_layers
        linears = {
            "qkv": (cfg.q_size + 2 * cfg.kv_size, h),
            "o": (h, cfg.q_size),
            "gate_up": (2 * cfg.intermediate_size, h),
            "down": (h, cfg.intermediate_size),
        }
        layer: Curve | None = None
        for name, (n, k) in linears.items():
            curve = self._gemm(name, n, k)
            layer = curve if layer is None else layer + curve
        self._layer_gemms = layer.scaled(L)
        self._head = self._gemm("lm_head", cfg.vocab_size, h)
        hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        try:
            self._ctx, self.lookups["attn_prefill"] = self.tables.context_grid(hq, hkv, d)
            self._gen, self.lookups["attn_decode"] = self.tables.generation_grid(hq, hkv, d)
        except NoTable as exc:
            self._ctx = _AttentionFloor(self, prefill=True)
            self._gen = _AttentionFloor(self, prefill=False)
            note = f"roofline with a {self.parts.attention_floor_s * 1e6:.0f} us floor ({exc})"
            self.lookups["attn_prefill"] = self.lookups["attn_decode"] = note
        p = self.parts
        self._other_floor = L * p.elementwise_kernels_per_layer * p.elementwise_floor_s
        self._other_bw = self.entry.hbm_bytes_per_s * p.elementwise_bandwidth_fraction
        self.lookups["other"] = "modelled: per-kernel floor + bytes at 0.8 of peak bandwidth"
        self._ctx_floor = self._ctx(1, 1)

    def _gemm(self, name: str, n: int, k: int) -> Curve:
        try:
            curve, how = self.tables.gemm_curve(n, k)
        except NoTable as exc:
            curve, how = _gemm_roofline(self.entry, n, k), f"roofline with a floor ({exc})"
        self.lookups[f"gemm_{name}"] = how
        return curve

    # Full-SM operator times -------------------------------------------------------------
    def _chunk(self, key: tuple[int, int]) -> float:
        """One layer's attention for a chunk of ``q`` new tokens after ``c`` cached ones."""
        q, c = key
        ctx = self._ctx
        s = q + c
        t = ctx(1, s)
        if c:
            # A chunk after a prefix costs its share of the causal pairs of the whole
            # sequence; never less than the chunk alone.
            t = max(t * (s * s - c * c) / (s * s), ctx(1, q))
        known = self._chunk_s
        if len(known) >= _PART_CACHE:
            known.clear()
        known[key] = t
        return t

    def _prefill(self, qs: tuple[int, ...], cs: tuple[int, ...]) -> float:
        known = self._chunk_s
        if len(qs) == 1 == len(cs):
            key = (qs[0], cs[0])
            t = known.get(key)
            return t if t is not None else self._chunk(key)
        times = []
        for key in zip(qs, cs, strict=True):
            t = known.get(key)
            times.append(t if t is not None else self._chunk(key))
        if len(times) == 1:
            return times[0]
        # One varlen kernel launch serves every chunk: the per-call floor is paid once.
        return max(sum(times) - (len(times) - 1) * self._ctx_floor, max(times))

    def _kept(self, known: dict, curve: Curve, x: int) -> float:
        if len(known) >= _PART_CACHE:
            known.clear()
        t = known[x] = curve(x)
        return t

    def _full_sm(self, shape: BatchShape) -> tuple[float, float, float, float]:
        L = self.config.num_layers
        qs, n = shape.prefill_q, shape.n_decode
        tokens = sum(qs) + n
        if tokens:
            layers = self._layers_s.get(tokens)
            if layers is None:
                layers = self._kept(self._layers_s, self._layer_gemms, tokens)
            sampled = shape.sampled
            head = self._head_s.get(sampled)
            if head is None:
                head = self._kept(self._head_s, self._head, sampled)
            gemm = layers + head
            other = self._other_floor + self.costs.other_bytes_per_token * tokens / self._other_bw
        else:
            gemm = other = 0.0
        prefill = L * self._prefill(qs, shape.prefill_ctx) if qs else 0.0
        decode = L * self._gen(n, shape.decode_ctx_sum / n + 1.0) if n else 0.0
        return gemm, prefill, decode, other

    def full_sm_times(self, shape: BatchShape) -> dict[str, float]:
        """Per operator class, seconds at all SMs with no co-runner: the measured times."""
        return dict(zip(OP_CLASSES, self._full(shape), strict=True))

    # The LatencyModel interface ---------------------------------------------------------
    def compute_rate(self, op: str, sms: int) -> float:
        return self.entry.bf16_flops * min(sms, self.gpu.num_sms) / self.gpu.num_sms

    def bandwidth(self, op: str, sms: int) -> float:
        saturating = self.parts.bandwidth_saturation * self.gpu.num_sms
        return self.entry.hbm_bytes_per_s * min(1.0, sms / saturating)

    # The two curves as factors of the full-SM rates, for the vectorised decode run; a model
    # that reshapes compute_rate or bandwidth reshapes these with them.
    def compute_scale(self, sms: int) -> float:
        n = self.gpu.num_sms
        return n / min(sms, n)

    def bandwidth_fraction(self, sms: int) -> float:
        return min(1.0, sms / (self.parts.bandwidth_saturation * self.gpu.num_sms))

    @property
    def hbm_bandwidth(self) -> float:
        return self.entry.hbm_bytes_per_s * self.parts.achievable_bandwidth_fraction

    def overhead_s(self, shape: BatchShape) -> float:
        return self.parts.iteration_overhead_s

    def decode_overhead_s(self, n_decode: int, ctx_sum: int) -> float:
        return self.parts.iteration_overhead_s

    def _efficiencies(self, shape: BatchShape) -> tuple[tuple[str, float, float, float], ...]:
        """Per class: (measured / roofline at full SMs, FLOPs, bytes)."""
        cost = self.costs.costs(shape)
        peak, bw = self.entry.bf16_flops, self.entry.hbm_bytes_per_s
        out = []
        for op, t in zip(OP_CLASSES, self._full(shape), strict=True):
            f, b = cost.flops[op], cost.bytes[op]
            roof = max(f / peak, b / bw)
            out.append((op, t / roof if roof > 0 else 0.0, f, b))
        return tuple(out)

    def op_times(self, shape: BatchShape, sms: int, share: float = 1.0) -> dict[str, float]:
        if sms >= self.gpu.num_sms and share == 1.0:
            return dict(zip(OP_CLASSES, self._full(shape), strict=True))
        out = {}
        rows = self._row(sms)
        for (op, k, f, b), (_, rate, bw) in zip(self._eff(shape), rows, strict=True):
            out[op] = k * max(f / rate, b / (bw * share)) if k else 0.0
        return out

    def predict(
        self, shape: BatchShape, sms: int, co_runner: BatchShape | None = None, co_sms: int = 0
    ) -> float:
        if shape.is_empty:
            return 0.0
        if sms >= self.gpu.num_sms and (co_runner is None or co_runner.is_empty):
            # The whole GPU alone: the measured operators as they are, plus what a batch
            # mixing the phases pays beyond them.
            full = self._full(shape)
            extra = 0.0
            if not self.mixed.is_zero:
                extra = self.mixed.extra_s(shape, dict(zip(OP_CLASSES, full, strict=True)))
            return sum(full) + self.parts.iteration_overhead_s + extra
        return super().predict(shape, sms, co_runner, co_sms)

    def op_roofline(self, shape: BatchShape, sms: int) -> dict[str, tuple[float, float]]:
        if sms <= 0:
            cost = self.costs.costs(shape)
            return {op: (cost.flops[op], cost.bytes[op]) for op in OP_CLASSES}
        rows = self._row(sms)
        return {
            op: (k * f / rate, k * b / bw)
            for (op, k, f, b), (_, rate, bw) in zip(self._eff(shape), rows, strict=True)
        }

    def _decode_run_array(
        self,
        n_decode: int,
        ctx_sum: int,
        steps: int,
        sms: int,
        co_runner: BatchShape | None,
        co_sms: int,
        first: int,
    ) -> np.ndarray:
        ctx = ctx_sum + n_decode * np.arange(first, first + steps, dtype=np.float64)
        L = self.config.num_layers
        if isinstance(self._gen, _AttentionFloor):
            t_attn = np.array([L * self._gen(n_decode, c / n_decode + 1.0) for c in ctx])
        else:
            t_attn = L * self._gen.row_array(n_decode, ctx / n_decode + 1.0)
        fixed = self._decode_fixed.get(n_decode)
        if fixed is None:
            fixed = self._decode_fixed[n_decode] = self._fixed_decode_parts(n_decode)
        t_fixed, c_fixed, m_fixed, fixed_bytes, k_fixed = fixed
        overhead = self.parts.iteration_overhead_s
        alone_full = t_fixed + t_attn
        n = self.gpu.num_sms
        if sms >= n and (co_runner is None or co_runner.is_empty):
            return alone_full + overhead
        af, ab = self.costs.attn_decode(n_decode, ctx)
        peak, bw_peak = self.entry.bf16_flops, self.entry.hbm_bytes_per_s
        c_attn, m_attn = af / peak, ab / bw_peak
        k_attn = t_attn / np.maximum(c_attn, m_attn)
        compute_scale = self.compute_scale(sms)
        bw_frac = self.bandwidth_fraction(sms)

        def busy(share):
            t = k_attn * np.maximum(c_attn * compute_scale, m_attn / (bw_frac * share))
            for k, c, m in zip(k_fixed, c_fixed, m_fixed, strict=True):
                t = t + k * np.maximum(c * compute_scale, m / (bw_frac * share))
            return t

        alone = busy(1.0)
        if co_runner is None or co_runner.is_empty:
            return alone + overhead
        _, other = self.demand(co_runner, co_sms)
        own = (fixed_bytes + ab) / alone
        return busy(np.minimum(1.0, self.hbm_bandwidth / (own + other))) + overhead

    _plain_steps = staticmethod(measured_steps)

    def _fixed_decode_parts(self, n_decode: int) -> tuple:
        """The GEMM and elementwise parts of a decode step, which its context does not change."""
        shape = BatchShape.decode(n_decode, n_decode)
        full = self._full(shape)
        effs = self._eff(shape)
        peak, bw_peak = self.entry.bf16_flops, self.entry.hbm_bytes_per_s
        parts = [effs[0], effs[3]]
        ks = tuple(k for _, k, _, _ in parts)
        cs = tuple(f / peak for _, _, f, _ in parts)
        ms = tuple(b / bw_peak for _, _, _, b in parts)
        return full[0] + full[3], cs, ms, sum(b for _, _, _, b in parts), ks

    @property
    def label(self) -> str:
        return (
            f"operator times: measured ({self.provenance}; elementwise ops and iteration "
            "overhead modelled); SM scaling and contention: modelled"
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "stack": self.stack,
            "tables": asdict(self.tables.source),
            "lookups": dict(self.lookups),
            "modelled": asdict(self.parts),
        }


class _AttentionFloor:
    """Attention where no table has the model's head shape: roofline with a per-call floor."""

    def __init__(self, model: MeasuredModel, prefill: bool) -> None:
        cfg = model.config
        self.floor = model.parts.attention_floor_s
        self.prefill = prefill
        self.flops_per_pair = 4.0 * cfg.num_heads * cfg.head_dim
        self.kv_bytes = cfg.dtype_bytes * 2 * cfg.num_kv_heads * cfg.head_dim
        # Half the tensor-core peak for flash attention, 0.8 of the bandwidth for its reads.
        self.rate = 0.5 * model.entry.bf16_flops
        self.bw = 0.8 * model.entry.hbm_bytes_per_s

    def __call__(self, batch: float, length: float) -> float:
        if batch <= 0:
            return 0.0
        pairs = length * (length + 1) / 2 if self.prefill else length
        work = batch * pairs * self.flops_per_pair / self.rate
        reads = batch * length * self.kv_bytes / self.bw
        return max(self.floor, work, reads)


def _gemm_roofline(entry: GpuEntry, n: int, k: int) -> Curve:
    """A GEMM no table covers: 0.7 of the bf16 peak, 0.8 of the bandwidth, a 3 us floor."""
    ms = (1, 16, 64, 256, 1024, 4096, 16384, 65536)
    times = tuple(
        max(3e-6, 2.0 * m * n * k / (0.7 * entry.bf16_flops),
            2.0 * (m * k + n * k + m * n) / (0.8 * entry.hbm_bytes_per_s))
        for m in ms
    )
    return Curve(tuple(float(m) for m in ms), times)
