"""Time every sample of a grid on SM partitions of a GPU: the raw rows of ``samples.parquet``.

A sample runs on a stream confined to its SM count (``profiler.partition``) and is timed with
CUDA events around each repeat, after writing a buffer twice the L2 size so weights and KV are
read from HBM as they are in a real model. Repeats adapt to the sample's duration (at least
``min_repeats``, at most ``repeats``, about ``budget_s`` in all) and the row keeps the median and
the 10th/90th percentiles. Whole iterations run ``grid.layers`` layers and are scaled to the
model's depth; decode iterations are captured in CUDA graphs as the runtime runs them. A co-run
starts a prefill iteration and back-to-back decode iterations on complementary partitions at
the same instant (both streams wait behind a short sleep while the host queues the work) and
keeps the decode steps that fall wholly inside the prefill.

The loop (``run_sweep``) is independent of CUDA: it takes the partitions, kernels and clock as
objects, so it also runs on a CPU with stand-ins (meaningless times, for tests).
"""

from __future__ import annotations

import importlib.metadata
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from profiler.config import ModelConfig
from profiler.grid import COPY, CORUN, ITERATION, PEAK, SweepGrid, plan
from profiler.partition import PartitionError

Launch = Callable[[], Any]
Progress = Callable[[int, int], None]
MAX_FAILURES_IN_A_ROW = 10


class SweepError(RuntimeError):
    """The sweep cannot go on (the GPU keeps failing samples)."""


def summarise(times: list[float]) -> dict[str, float | int]:
    t = np.asarray(times, dtype=float)
    return {
        "median_s": float(np.median(t)),
        "p10_s": float(np.percentile(t, 10)),
        "p90_s": float(np.percentile(t, 90)),
        "repeats": len(t),
    }


@dataclass
class CudaClock:
    """CUDA-event timing on a stream, with an L2 flush before every repeat."""

    device: Any
    l2_bytes: int
    warmup: int = 2
    min_repeats: int = 3
    repeats: int = 10
    budget_s: float = 0.05
    sleep_s: float = 3e-3
    graph_failures: list[str] = field(default_factory=list)
    graphs: int = 0

    def __post_init__(self) -> None:
        import torch

        self.torch = torch
        self._flush = torch.empty(
            max(2 * self.l2_bytes, 64 << 20), dtype=torch.uint8, device=self.device
        )

    def ready(self) -> None:
        # Inputs are written on the default stream; partition streams do not wait for it.
        self.torch.cuda.synchronize(self.device)

    def recover(self) -> None:
        self.torch.cuda.synchronize(self.device)
        self.torch.cuda.empty_cache()

    def _events(self, n: int) -> list[Any]:
        return [self.torch.cuda.Event(enable_timing=True) for _ in range(n)]

    @staticmethod
    def _weighted(ev: list[Any], weights: list[float]) -> float:
        return sum(w * ev[j].elapsed_time(ev[j + 1]) * 1e-3 for j, w in enumerate(weights))

    def _run(self, segments: list[Launch], stream: Any, n: int) -> list[list[Any]]:
        events = [self._events(len(segments) + 1) for _ in range(n)]
        for ev in events:
            self._flush.zero_()
            ev[0].record(stream)
            for fn, e in zip(segments, ev[1:], strict=True):
                fn()
                e.record(stream)
        return events

    def time(self, segments: list[Launch], weights: list[float], stream: Any) -> list[float]:
        torch = self.torch
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                for fn in segments:
                    fn()
            first = self._run(segments, stream, 1)
            stream.synchronize()
            t1 = self._weighted(first[0], weights)
            raw = self._weighted(first[0], [1.0] * len(segments))
            n = int(self.budget_s / max(raw, 1e-6))
            n = min(self.repeats, max(self.min_repeats, n)) - 1
            rest = self._run(segments, stream, n)
            stream.synchronize()
        return [t1] + [self._weighted(ev, weights) for ev in rest]

    def graph(self, fn: Launch, stream: Any) -> Launch:
        """``fn`` captured in a CUDA graph on ``stream`` (replayed there), or ``fn`` itself."""
        torch = self.torch
        try:
            with torch.cuda.stream(stream):
                fn()
            stream.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=stream):
                fn()
        except Exception as exc:  # capture support varies by kernel; eager still measures
            torch.cuda.synchronize(self.device)
            if len(self.graph_failures) < 5:
                self.graph_failures.append(_first_line(exc))
            return fn
        self.graphs += 1
        return g.replay

    def _sleep(self, stream: Any) -> None:
        sleep = getattr(self.torch.cuda, "_sleep", None)
        if sleep is not None:
            with self.torch.cuda.stream(stream):
                sleep(int(self.sleep_s * 1.5e9))  # cycles at a conservative clock

    def corun(
        self,
        prefill: list[Launch],
        decode: list[Launch],
        weights: list[float],
        streams: tuple[Any, Any],
        reps: int,
    ) -> tuple[list[float], list[float]]:
        torch = self.torch
        p_stream, d_stream = streams
        alone_p = self.time(prefill, [1.0] * len(prefill), p_stream)
        alone_d = self.time(decode, [1.0] * len(decode), d_stream)
        steps = math.ceil(1.3 * np.median(alone_p) / np.median(alone_d)) + 2
        p_times, d_times = [], []
        for _ in range(reps):
            self._flush.zero_()
            torch.cuda.synchronize(self.device)
            self._sleep(p_stream)
            self._sleep(d_stream)
            with torch.cuda.stream(p_stream):
                pev = self._events(len(prefill) + 1)
                pev[0].record(p_stream)
                for fn, e in zip(prefill, pev[1:], strict=True):
                    fn()
                    e.record(p_stream)
            with torch.cuda.stream(d_stream):
                dev = [self._events(len(decode) + 1) for _ in range(steps)]
                for ev in dev:
                    ev[0].record(d_stream)
                    for fn, e in zip(decode, ev[1:], strict=True):
                        fn()
                        e.record(d_stream)
            torch.cuda.synchronize(self.device)
            p_times.append(self._weighted(pev, weights))
            inside = [
                ev
                for ev in dev
                if pev[0].elapsed_time(ev[0]) >= 0 and ev[-1].elapsed_time(pev[-1]) >= 0
            ]
            d_times += [self._weighted(ev, weights) for ev in (inside or dev[1:-1] or dev)]
        return p_times, d_times


@dataclass
class Sweep:
    """What a sweep needs: partitions (``stream``/``streams``), kernels and a clock."""

    cfg: ModelConfig
    grid: SweepGrid
    pool: Any
    kernels: Any
    clock: Any
    errors: list[str] = field(default_factory=list)

    @property
    def scale(self) -> float:
        return self.cfg.num_layers / self.grid.layers

    def segments(self, row: dict[str, Any], stream: Any) -> tuple[list[Launch], list[float]]:
        k, op, name = self.kernels, row["op_class"], row["op_name"]
        if op == "gemm":
            return [k.gemm(name, row["tokens"])], [1.0]
        if op == "attn_prefill":
            return [k.attention_prefill(row["chunk"], row["prefix"])], [1.0]
        if op == "attn_decode":
            return [k.attention_decode(row["batch"], row["context"])], [1.0]
        if op == "other":
            return [k.other(name, row["tokens"])], [1.0]
        if op == PEAK:
            return [k.peak(self.grid.peak_n)], [1.0]
        if op == COPY:
            return [k.copy(self.grid.copy_bytes)], [1.0]
        if op in (ITERATION, CORUN):
            return self.iteration(name, row, stream), [self.scale, 1.0]
        raise ValueError(f"unknown sample class {op!r}")

    def iteration(self, kind: str, row: dict[str, Any], stream: Any) -> list[Launch]:
        if kind == "prefill":
            return list(self.kernels.prefill_iteration(row["chunk"], row["prefix"]))
        segs = self.kernels.decode_iteration(row["batch"], row["context"])
        return [self.clock.graph(fn, stream) for fn in segs]

    def measure(self, row: dict[str, Any]) -> list[float]:
        stream = self.pool.stream(row["sms"])
        segs, weights = self.segments(row, stream)
        self.clock.ready()
        return self.clock.time(segs, weights, stream)

    def measure_corun(self, row: dict[str, Any]) -> dict[str, list[float]]:
        d, p = (
            (row["sms"], row["co_sms"])
            if row["op_name"] == "decode"
            else (row["co_sms"], row["sms"])
        )
        p_stream, d_stream = self.pool.streams(p, d)
        prefill = self.iteration("prefill", row, p_stream)
        decode = self.iteration("decode", row, d_stream)
        self.clock.ready()
        reps = max(self.grid.min_repeats, self.grid.repeats // 2)
        p_times, d_times = self.clock.corun(
            prefill, decode, [self.scale, 1.0], (p_stream, d_stream), reps
        )
        return {"prefill": p_times, "decode": d_times}

    def run(self, progress: Progress | None = None) -> pd.DataFrame:
        rows = plan(self.cfg, self.grid, self.pool.num_sms)
        out: list[dict[str, Any]] = []
        coruns: dict[tuple, dict[str, list[float]]] = {}
        failures = 0
        for i, row in enumerate(rows):
            try:
                if row["op_class"] == CORUN:
                    pair = tuple(row[c] for c in ("chunk", "prefix", "batch", "context"))
                    key = (min(row["sms"], row["co_sms"]), max(row["sms"], row["co_sms"]), *pair)
                    if key not in coruns:
                        coruns[key] = self.measure_corun(row)
                    times = coruns[key][row["op_name"]]
                else:
                    times = self.measure(row)
                out.append({**row, **summarise(times)})
                failures = 0
            except PartitionError:
                raise
            except Exception as exc:  # one failing kernel must not lose a long sweep
                failures += 1
                self.errors.append(
                    f"{row['op_class']}/{row['op_name']} on {row['sms']} SMs: {_first_line(exc)}"
                )
                if failures >= MAX_FAILURES_IN_A_ROW:
                    raise SweepError(
                        f"{failures} samples failed in a row; last: {self.errors[-1]}"
                    ) from None
                self.clock.recover()
            if progress:
                progress(i + 1, len(rows))
        return pd.DataFrame(out)


def gpu_sweep(
    cfg: ModelConfig,
    quick: bool = True,
    device: int = 0,
    grid: SweepGrid | None = None,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run a sweep on CUDA device ``device``; the samples and the profile's meta."""
    import torch

    from profiler.kernels import Kernels
    from profiler.partition import PartitionPool, probe

    info = probe(device)
    g = max(info.min_sms, info.granularity)
    if grid is None:
        grid = (SweepGrid.quick if quick else SweepGrid.full)(info.num_sms, g)
    sizes = {s for s in grid.sms if s < info.num_sms} | set(grid.corun_decode_sms)
    started = time.time()
    pool = PartitionPool(device, sizes=sizes)
    dev = torch.device("cuda", device)
    kernels = Kernels(cfg, dev, grid.layers)
    clock = CudaClock(
        dev, info.l2_bytes, grid.warmup, grid.min_repeats, grid.repeats, grid.budget_s
    )
    sweep = Sweep(cfg, grid, pool, kernels, clock)
    partitions = {**pool.describe(), "backend": info.backend}
    try:
        samples = sweep.run(progress)
    finally:
        pool.close()
    meta = profile_meta(info, cfg, grid, kernels, clock, partitions, started, sweep.errors)
    return samples, meta


def profile_meta(
    info: Any,
    cfg: ModelConfig,
    grid: Any,
    kernels: Any,
    clock: Any,
    partitions: dict[str, Any],
    started: float,
    skipped: list[str],
) -> dict[str, Any]:
    """A measured profile's ``meta.json``: device, driver, CUDA, torch, model, grid, date."""
    import torch

    g = max(info.min_sms, info.granularity)
    return {
        "device": info.name,
        "num_sms": info.num_sms,
        "sm_granularity": g,
        "memory_bytes": info.memory_bytes,
        "l2_bytes": info.l2_bytes,
        "compute_capability": ".".join(map(str, info.compute_capability)),
        "driver": info.driver,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "cuda_python": _version("cuda-python"),
        "flash_attn": _version("flash-attn"),
        "attention": kernels.attention_backend,
        "partitions": partitions,
        "decode_graphs": clock.graphs > 0 and not clock.graph_failures,
        "graph_failures": clock.graph_failures,
        "synthetic": False,
        "model": cfg.to_dict(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "started_at": datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.time() - started, 1),
        "grid": grid.to_dict(),
        "skipped": skipped,
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
