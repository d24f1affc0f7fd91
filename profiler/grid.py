"""What a sweep measures (the grid) and the work each sample does (FLOPs and bytes).

Pure Python: the sweep times these samples on a GPU, the synthetic generator invents their
times, and the fit relates time to work. The per-sample counts follow ``profiler.ops``: a
sample is one layer's operator (or the whole model for iterations), and summing the per-layer
samples over the layers gives ``CostModel``'s totals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from policies.batch import BatchShape
from profiler.config import ModelConfig
from profiler.ops import CostModel

GEMM_NAMES = ("qkv", "o", "gate_up", "down", "lm_head")
OTHER_NAMES = ("rmsnorm", "rope", "silu_mul", "residual")
# Sample classes beyond the latency model's operator classes.
PEAK, COPY, ITERATION, CORUN = "peak", "copy", "iteration", "corun"


@dataclass(frozen=True)
class SweepGrid:
    """Every shape and SM count a sweep times; ``quick``/``full`` are the two presets."""

    sms: tuple[int, ...]
    gemm_tokens: tuple[int, ...]
    head_rows: tuple[int, ...]
    prefill: tuple[tuple[int, int], ...]  # (chunk, prefix)
    decode: tuple[tuple[int, int], ...]  # (batch, context per request)
    other_tokens: tuple[int, ...]
    iter_prefill: tuple[tuple[int, int], ...]
    iter_decode: tuple[tuple[int, int], ...]
    corun_decode_sms: tuple[int, ...]
    corun_shapes: tuple[tuple[int, int, int, int], ...]  # (chunk, prefix, batch, context)
    layers: int = 2  # iterations run this many layers and are scaled to the model's depth
    peak_n: int = 8192  # square bf16 matmul that measures achievable FLOP/s
    copy_bytes: int = 1 << 30  # tensor copy that measures achievable bandwidth
    warmup: int = 2
    repeats: int = 10
    min_repeats: int = 3
    budget_s: float = 0.05  # timing budget of one sample; fewer repeats for slow ones
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def quick(num_sms: int, granularity: int) -> SweepGrid:
        g = granularity
        return SweepGrid(
            sms=sm_counts(num_sms, g, (1, 2, 4, 6, 8, 12)),
            gemm_tokens=(1, 16, 128, 512, 2048, 8192),
            head_rows=(1, 32, 256),
            prefill=((512, 0), (2048, 0), (2048, 4096), (8192, 0)),
            decode=((1, 1024), (16, 2048), (64, 1024), (256, 512)),
            other_tokens=(1, 256, 4096),
            iter_prefill=((128, 0), (512, 0), (2048, 0)),
            iter_decode=((1, 512), (16, 1024), (128, 512)),
            corun_decode_sms=sm_counts(num_sms, g, (2, 4, 8), include_all=False),
            corun_shapes=((2048, 0, 64, 1024), (1024, 0, 16, 512)),
            repeats=8,
            name="quick",
        )

    @staticmethod
    def full(num_sms: int, granularity: int) -> SweepGrid:
        g = granularity
        return SweepGrid(
            sms=sm_counts(num_sms, g, range(1, num_sms // g + 1)),
            gemm_tokens=(1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
            head_rows=(1, 8, 32, 128, 512),
            prefill=(
                (256, 0),
                (1024, 0),
                (2048, 0),
                (4096, 0),
                (8192, 0),
                (512, 4096),
                (2048, 2048),
                (2048, 8192),
                (4096, 12288),
            ),
            decode=(
                (1, 1024),
                (1, 8192),
                (8, 4096),
                (32, 512),
                (32, 4096),
                (64, 2048),
                (128, 1024),
                (256, 512),
                (256, 2048),
            ),
            other_tokens=(1, 64, 512, 2048, 8192),
            iter_prefill=((128, 0), (512, 0), (2048, 0), (4096, 2048)),
            iter_decode=((1, 512), (8, 2048), (32, 1024), (128, 1024), (256, 512)),
            corun_decode_sms=sm_counts(num_sms, g, (1, 2, 3, 4, 6, 8, 10), include_all=False),
            corun_shapes=((2048, 0, 64, 1024), (4096, 4096, 128, 2048), (1024, 0, 16, 512)),
            repeats=12,
            name="full",
        )


def sm_counts(
    num_sms: int, granularity: int, multiples: Any, include_all: bool = True
) -> tuple[int, ...]:
    """SM counts a green context can have: multiples of the granularity, plus the whole GPU."""
    counts = {granularity * int(m) for m in multiples if 0 < granularity * int(m) < num_sms}
    if include_all:
        counts.add(num_sms)
    return tuple(sorted(counts))


@dataclass(frozen=True)
class Work:
    flops: float
    bytes: float


class SampleCosts:
    """FLOPs and bytes of one sample, consistent with ``CostModel`` (one layer unless noted)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.cost = CostModel(cfg)
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.dtype_bytes
        q, kv = cfg.q_size, cfg.kv_size
        self.linear = {
            "qkv": (h, q + 2 * kv),
            "o": (q, h),
            "gate_up": (h, 2 * i),
            "down": (i, h),
            "lm_head": (h, cfg.vocab_size),
        }
        # Per token: (bytes, flops) of each elementwise op, summing to CostModel.other per layer
        # when each of rmsnorm and residual is counted twice (they run twice per layer).
        self.elementwise = {
            "rmsnorm": (b * 2 * h, 4.0 * h),
            "rope": (b * 2 * (q + kv), 0.0),
            "silu_mul": (b * 3 * i, 4.0 * i),
            "residual": (b * 3 * h, 1.0 * h),
        }
        self.layers = cfg.num_layers

    def gemm(self, name: str, tokens: int) -> Work:
        d_in, d_out = self.linear[name]
        b = self.cfg.dtype_bytes
        return Work(2.0 * tokens * d_in * d_out, b * (tokens * (d_in + d_out) + d_in * d_out))

    def attn_prefill(self, chunk: int, prefix: int) -> Work:
        f, nbytes = self.cost.attn_prefill(BatchShape.prefill(chunk, prefix))
        return Work(f / self.layers, nbytes / self.layers)

    def attn_decode(self, batch: int, context: int) -> Work:
        f, nbytes = self.cost.attn_decode(batch, batch * context)
        return Work(float(f) / self.layers, float(nbytes) / self.layers)

    def other(self, name: str, tokens: int) -> Work:
        nbytes, flops = self.elementwise[name]
        return Work(flops * tokens, float(nbytes * tokens))

    def peak(self, n: int) -> Work:
        b = self.cfg.dtype_bytes
        return Work(2.0 * n**3, 3.0 * b * n * n)

    @staticmethod
    def copy(nbytes: int) -> Work:
        return Work(0.0, 2.0 * nbytes)  # read and write

    def iteration(self, shape: BatchShape) -> Work:
        c = self.cost.costs(shape)
        return Work(sum(c.flops.values()), c.total_bytes)


def sample_shape(kind: str, chunk: int, prefix: int, batch: int, context: int) -> BatchShape:
    """The batch an iteration or co-run lane ran: a prefill chunk or a decode batch."""
    if kind == "prefill":
        return BatchShape.prefill(chunk, prefix)
    return BatchShape.decode(batch, batch * context)


def plan(cfg: ModelConfig, grid: SweepGrid, num_sms: int) -> list[dict[str, Any]]:
    """Every sample of a sweep, in the order a sweep times them, with its work but no time.

    Co-runs split the GPU into ``d`` decode SMs and the rest for prefill; each lane's shape is
    also timed alone on the same partition (as an iteration row) so slowdowns can be read off.
    """
    costs = SampleCosts(cfg)
    rows: list[dict[str, Any]] = []

    def add(op_class: str, op_name: str, sms: int, work: Work, **shape: int | str) -> None:
        row: dict[str, Any] = dict.fromkeys(
            ("tokens", "batch", "context", "chunk", "prefix", "co_sms"), 0
        )
        row.update(op_class=op_class, op_name=op_name, sms=sms, co_kind="")
        row.update(shape)
        row.update(flops=float(work.flops), bytes=float(work.bytes))
        rows.append(row)

    def iteration(sms: int, kind: str, a: int, b: int) -> None:
        if kind == "prefill":
            work = costs.iteration(sample_shape(kind, a, b, 0, 0))
            add(ITERATION, kind, sms, work, tokens=a, chunk=a, prefix=b)
        else:
            work = costs.iteration(sample_shape(kind, 0, 0, a, b))
            add(ITERATION, kind, sms, work, tokens=a, batch=a, context=b)

    for s in grid.sms:
        for name in GEMM_NAMES[:-1]:
            for n in grid.gemm_tokens:
                add("gemm", name, s, costs.gemm(name, n), tokens=n)
        for n in grid.head_rows:
            add("gemm", "lm_head", s, costs.gemm("lm_head", n), tokens=n)
        for chunk, prefix in grid.prefill:
            work = costs.attn_prefill(chunk, prefix)
            add("attn_prefill", "attention", s, work, tokens=chunk, chunk=chunk, prefix=prefix)
        for batch, context in grid.decode:
            work = costs.attn_decode(batch, context)
            add("attn_decode", "attention", s, work, tokens=batch, batch=batch, context=context)
        for name in OTHER_NAMES:
            for n in grid.other_tokens:
                add("other", name, s, costs.other(name, n), tokens=n)
        add(PEAK, "matmul", s, costs.peak(grid.peak_n), tokens=grid.peak_n)
        add(COPY, "copy", s, costs.copy(grid.copy_bytes))
        for chunk, prefix in grid.iter_prefill:
            iteration(s, "prefill", chunk, prefix)
        for batch, context in grid.iter_decode:
            iteration(s, "decode", batch, context)

    alone = {
        (r["sms"], r["op_name"], r["chunk"], r["prefix"], r["batch"], r["context"])
        for r in rows
        if r["op_class"] == ITERATION
    }
    for d in grid.corun_decode_sms:
        p = num_sms - d
        for chunk, prefix, batch, context in grid.corun_shapes:
            if (p, "prefill", chunk, prefix, 0, 0) not in alone:
                iteration(p, "prefill", chunk, prefix)
                alone.add((p, "prefill", chunk, prefix, 0, 0))
            if (d, "decode", 0, 0, batch, context) not in alone:
                iteration(d, "decode", batch, context)
                alone.add((d, "decode", 0, 0, batch, context))
            shape = dict(chunk=chunk, prefix=prefix, batch=batch, context=context)
            work = costs.iteration(sample_shape("decode", chunk, prefix, batch, context))
            add(CORUN, "decode", d, work, tokens=batch, co_sms=p, co_kind="prefill", **shape)
            work = costs.iteration(sample_shape("prefill", chunk, prefix, batch, context))
            add(CORUN, "prefill", p, work, tokens=chunk, co_sms=d, co_kind="decode", **shape)
    return rows


def row_shapes(row: Any) -> tuple[BatchShape, BatchShape | None]:
    """A whole-iteration row's own batch and, for a co-run row, its co-runner's batch."""
    kind = str(row["op_name"])
    own = sample_shape(kind, row["chunk"], row["prefix"], row["batch"], row["context"])
    if row["op_class"] != CORUN:
        return own, None
    other = "prefill" if kind == "decode" else "decode"
    co = sample_shape(other, row["chunk"], row["prefix"], row["batch"], row["context"])
    return own, co
