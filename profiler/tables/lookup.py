"""Operator tables measured on real GPUs, and interpolation in them.

A GEMM is looked up in M (piecewise linear between measured M, which the data samples on
both sides of every wave boundary) after interpolating its (N, K) bilinearly between the
measured shapes around it, so a model's 14336-wide down projection comes from the 12288 and
16384 columns. Attention is interpolated bilinearly in (batch, work) for the model's
(heads, KV heads, head dim). Past the measured range a kernel's time grows as its work
does: linearly in M, N and batch, linearly (decode) or quadratically (prefill) in length.
All times are seconds per call of one layer's kernel.
"""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TABLES_DIR = Path(__file__).parent / "aiconfigurator"
MS = 1e-3
PREFILL_GROWTH = 1.5  # between memory-bound (length) and compute-bound (length ** 2) work


class NoTable(LookupError):
    """The data holds no table for this GPU, stack or shape."""


@functools.cache
def manifest() -> dict:
    return json.loads((TABLES_DIR / "manifest.json").read_text())


@dataclass(frozen=True)
class TableSource:
    gpu_dir: str
    stack: str
    version: str
    device: str
    package: str

    @property
    def label(self) -> str:
        return f"{self.package}, {self.device}, {self.stack} {self.version}"


def table_source(gpu_dir: str, stack: str) -> TableSource:
    m = manifest()
    entry = m["gpus"].get(gpu_dir, {}).get(stack)
    if entry is None:
        have = ", ".join(sorted(m["gpus"].get(gpu_dir, {}))) or "none"
        raise NoTable(f"no {stack} tables for {gpu_dir} (stacks with tables: {have})")
    return TableSource(
        gpu_dir, stack, entry["version"], entry["device"], f"{m['source']} {m['version']}"
    )


@dataclass(frozen=True)
class Curve:
    """A piecewise-linear function of one variable, extended proportionally past its end."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, v: float) -> float:
        x, y = self.x, self.y
        if v <= x[0]:
            return y[0] if v > 0 else 0.0
        if v >= x[-1]:
            return y[-1] * v / x[-1]
        i = bisect.bisect_right(x, v)
        x0, x1 = x[i - 1], x[i]
        return y[i - 1] + (y[i] - y[i - 1]) * (v - x0) / (x1 - x0)

    def __add__(self, other: Curve) -> Curve:
        xs = tuple(sorted(set(self.x) | set(other.x)))
        return Curve(xs, tuple(self(v) + other(v) for v in xs))

    def scaled(self, factor: float) -> Curve:
        return Curve(self.x, tuple(v * factor for v in self.y))


def _on_row(xs: list[float], ys: list[float], x: float, tail: float) -> float:
    """A grid row's value at ``x`` (its ``length ** growth``): linear between its points,
    its first value below them, growing as ``x ** tail`` past its last."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1] * (x / xs[-1]) ** tail
    j = bisect.bisect_right(xs, x)
    return ys[j - 1] + (ys[j] - ys[j - 1]) * (x - xs[j - 1]) / (xs[j] - xs[j - 1])


class WorkGrid:
    """Latency over (batch, length), bilinear in batch and in ``length ** growth``.

    Attention time is close to affine in its work, which grows with the batch and with
    ``length ** growth`` (2 for causal prefill, 1 for decode), so interpolating linearly in
    those is exact for an affine kernel and stays between the measured neighbours. Each
    batch row may stop early (the data skips shapes that did not fit); past its last point a
    row grows in proportion to the work, as it does past the largest batch.
    """

    def __init__(
        self, batches, lengths, values: np.ndarray, growth: float, tail: float | None = None
    ) -> None:
        self.growth = growth
        self.tail = (tail if tail is not None else growth) / growth
        self._scalar_rows: dict[float, Callable[[float], float]] = {}  # by batch
        # A batch between two measured rows: the rows and their weights, by batch.
        self._between: dict[float, tuple] = {}
        self.batches = [float(b) for b in batches]
        self.rows: list[tuple[list[float], list[float]]] = []
        for row in values:
            ok = ~np.isnan(row)
            xs = [float(v) ** growth for v in np.asarray(lengths, dtype=np.float64)[ok]]
            self.rows.append((xs, [float(v) for v in row[ok]]))
        # A batch row with no entries borrows its neighbour's, scaled by batch size.
        for i, (xs, _) in enumerate(self.rows):
            if not xs:
                j = i - 1 if i > 0 else i + 1
                f = self.batches[i] / self.batches[j]
                self.rows[i] = (self.rows[j][0], [v * f for v in self.rows[j][1]])

    def _row(self, i: int, x: float) -> float:
        xs, ys = self.rows[i]
        return _on_row(xs, ys, x, self.tail)

    def __call__(self, batch: float, length: float) -> float:
        if batch <= 0:
            return 0.0
        x = max(length, 1.0) ** self.growth
        b = self.batches
        if batch >= b[-1]:
            return self._row(len(b) - 1, x) * batch / b[-1]
        if batch <= b[0]:
            return self._row(0, x)
        hit = self._between.get(batch)
        if hit is None:
            hit = self._between_rows(batch)
        # (1 - t) * _row(i - 1, x) + t * _row(i, x), from the rows and weights kept by batch.
        xs, ys, xs1, ys1, u, t = hit
        tail = self.tail
        return u * _on_row(xs, ys, x, tail) + t * _on_row(xs1, ys1, x, tail)

    def _between_rows(self, batch: float) -> tuple:
        b = self.batches
        i = bisect.bisect_right(b, batch)
        t = (batch - b[i - 1]) / (b[i] - b[i - 1])
        cache = self._between
        if len(cache) >= 1024:
            cache.clear()
        hit = cache[batch] = (*self.rows[i - 1], *self.rows[i], 1 - t, t)
        return hit

    def row_array(self, batch: float, lengths: np.ndarray) -> np.ndarray:
        """The same as calling for every length, vectorised (decode runs)."""
        x = np.maximum(lengths, 1.0) ** self.growth

        def row(i: int) -> np.ndarray:
            xs, ys = self.rows[i]
            out = np.interp(x, xs, ys)
            tail = x > xs[-1]
            out[tail] = ys[-1] * (x[tail] / xs[-1]) ** self.tail
            return out

        b = self.batches
        if batch >= b[-1]:
            return row(len(b) - 1) * (batch / b[-1])
        if batch <= b[0]:
            return row(0)
        i = bisect.bisect_right(b, batch)
        t = (batch - b[i - 1]) / (b[i] - b[i - 1])
        return (1 - t) * row(i - 1) + t * row(i)

    def row_scalar(self, batch: float) -> Callable[[float], float] | None:
        """``row_array`` for one length at a time, in plain floats and bit for bit: the same
        operations in the same order, ``np.interp``'s included. None where the growth or
        tail exponent is not 1, whose powers numpy and Python may round differently."""
        if self.growth != 1.0 or self.tail != 1.0:
            return None
        cache = self._scalar_rows
        hit = cache.get(batch)
        if hit is None:
            if len(cache) >= 1024:
                cache.clear()
            hit = cache[batch] = self._row_scalar(batch)
        return hit

    def _row_scalar(self, batch: float) -> Callable[[float], float]:
        def row(i: int) -> Callable[[float], float]:
            xs, ys = self.rows[i]
            last = len(xs) - 1

            def at(x: float) -> float:
                # np.interp: the left value below the grid, exact on a grid point, else the
                # slope of the segment times the distance from its left end, plus its value.
                if x < xs[0]:
                    return ys[0]
                if x > xs[last]:
                    return ys[last] * (x / xs[last])
                j = bisect.bisect_right(xs, x) - 1
                if j == last or xs[j] == x:
                    return ys[j]
                return (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]) * (x - xs[j]) + ys[j]

            return at

        b = self.batches
        if batch >= b[-1]:
            top, scale = row(len(b) - 1), batch / b[-1]
            return lambda length: top(length if length > 1.0 else 1.0) * scale
        if batch <= b[0]:
            low = row(0)
            return lambda length: low(length if length > 1.0 else 1.0)
        i = bisect.bisect_right(b, batch)
        t = (batch - b[i - 1]) / (b[i] - b[i - 1])
        return self._mixed_scalar(i - 1, i, 1 - t, t)

    def _mixed_scalar(self, lo: int, hi: int, u: float, t: float) -> Callable[[float], float]:
        """``u * row lo + t * row hi`` at one length: both rows inlined in one function, their
        slopes computed once, one bisection where the rows share their lengths. A decode run
        evaluates this once per step, hundreds of thousands of times in a simulation."""
        xs0, ys0 = self.rows[lo]
        xs1, ys1 = self.rows[hi]
        k0, k1 = _slopes(xs0, ys0), _slopes(xs1, ys1)
        first0, last0, n0 = xs0[0], xs0[-1], len(xs0) - 1
        first1, last1, n1 = xs1[0], xs1[-1], len(xs1) - 1
        y_first0, y_last0, y_first1, y_last1 = ys0[0], ys0[-1], ys1[0], ys1[-1]
        bisect_right = bisect.bisect_right

        # Each row as np.interp computes it (see ``_row_scalar``'s ``at``): the left value
        # below the grid, proportional past its end, exact on a grid point, else the
        # segment's slope times the distance from its left end, plus its value.
        if xs0 == xs1:

            def shared(length: float) -> float:
                x = length if length > 1.0 else 1.0
                if x < first0:
                    return u * y_first0 + t * y_first1
                if x > last0:
                    return u * (y_last0 * (x / last0)) + t * (y_last1 * (x / last1))
                j = bisect_right(xs0, x) - 1
                if j == n0 or xs0[j] == x:
                    return u * ys0[j] + t * ys1[j]
                d = x - xs0[j]
                return u * (k0[j] * d + ys0[j]) + t * (k1[j] * d + ys1[j])

            return shared

        def mixed(length: float) -> float:
            x = length if length > 1.0 else 1.0
            if x < first0:
                a = y_first0
            elif x > last0:
                a = y_last0 * (x / last0)
            else:
                j = bisect_right(xs0, x) - 1
                a = ys0[j] if j == n0 or xs0[j] == x else k0[j] * (x - xs0[j]) + ys0[j]
            if x < first1:
                c = y_first1
            elif x > last1:
                c = y_last1 * (x / last1)
            else:
                j = bisect_right(xs1, x) - 1
                c = ys1[j] if j == n1 or xs1[j] == x else k1[j] * (x - xs1[j]) + ys1[j]
            return u * a + t * c

        return mixed


def _slopes(xs: list[float], ys: list[float]) -> list[float]:
    """Each segment's slope as np.interp computes it (the last entry is never used)."""
    return [(ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]) for j in range(len(xs) - 1)] + [0.0]


class OperatorTables:
    """One GPU and stack's GEMM, context- and generation-attention tables."""

    def __init__(
        self,
        source: TableSource,
        gemm: pd.DataFrame | None = None,
        context: pd.DataFrame | None = None,
        generation: pd.DataFrame | None = None,
    ) -> None:
        """Tables from the shipped files, or from frames given (held-out subsets of them)."""
        self.source = source
        d = TABLES_DIR / source.gpu_dir / source.stack
        self.gemm = gemm if gemm is not None else pd.read_parquet(d / "gemm.parquet")
        self.context = (
            context if context is not None else pd.read_parquet(d / "context_attention.parquet")
        )
        self.generation = (
            generation
            if generation is not None
            else pd.read_parquet(d / "generation_attention.parquet")
        )
        self._gemm_by_nk = {
            (int(n), int(k)): (g.m.to_numpy(np.float64), g.latency.to_numpy(np.float64) * MS)
            for (n, k), g in self.gemm.sort_values("m").groupby(["n", "k"])
        }
        self.gemm_n = sorted({n for n, _ in self._gemm_by_nk})
        self.gemm_k = sorted({k for _, k in self._gemm_by_nk})

    # GEMMs -----------------------------------------------------------------------------
    def gemm_curve(self, n: int, k: int) -> tuple[Curve, str]:
        """Seconds of one (M x K) @ (K x N) GEMM as a function of M, and how it was found."""
        if (n, k) in self._gemm_by_nk:
            m, t = self._gemm_by_nk[(n, k)]
            return Curve(tuple(map(float, m)), tuple(map(float, t))), "table"
        n_pts, n_how = _bracket(self.gemm_n, n)
        k_pts, k_how = _bracket(self.gemm_k, k)
        corners = [(nn, kk, wn * wk) for nn, wn in n_pts for kk, wk in k_pts]
        present = [(nn, kk) for nn, kk, _ in corners if (nn, kk) in self._gemm_by_nk]
        if not present:
            raise NoTable(f"GEMM N={n} K={k}: no measured shape around it")
        m_grid = self._gemm_by_nk[present[0]][0]
        t_at = np.zeros_like(m_grid)
        for nn, kk, w in corners:
            t_at += w * self._corner(nn, kk, present, m_grid)
        scale = _outside(self.gemm_n, n) * _outside(self.gemm_k, k)
        if "extrapolated" in n_how + k_how:
            how = "extrapolated in N or K"
        elif len(present) < len(corners):
            how = "interpolated in N, K (a corner scaled from its neighbour)"
        else:
            how = "interpolated in N, K"
        return Curve(tuple(map(float, m_grid)), tuple(map(float, t_at * scale))), how

    def _corner(self, n: int, k: int, present, m_grid: np.ndarray) -> np.ndarray:
        """A measured shape's times on ``m_grid``; one the data skipped (the largest shapes
        on some GPUs) is scaled from a measured neighbour sharing its N or K."""
        if (n, k) in self._gemm_by_nk:
            m, t = self._gemm_by_nk[(n, k)]
            return np.interp(m_grid, m, t)
        nn, kk = present[0]
        m, t = self._gemm_by_nk[(nn, kk)]
        return np.interp(m_grid, m, t) * (n / nn) * (k / kk)

    # Attention -------------------------------------------------------------------------
    def _grid(self, df: pd.DataFrame, length: str, heads: int, kv_heads: int, head_dim: int,
              growth: float, offset: int, tail: float) -> tuple[WorkGrid, str]:
        exact = df[(df.num_heads == heads) & (df.num_key_value_heads == kv_heads)
                   & (df.head_dim == head_dim)]
        how = "table"
        scale = 1.0
        if exact.empty:
            # The nearest measured head count with the same head dim and grouping, scaled:
            # attention time grows with the query heads at a fixed group size.
            same = df[df.head_dim == head_dim]
            if same.empty:
                raise NoTable(f"attention head_dim={head_dim}: no measured shape")
            group = heads / kv_heads
            cand = same[same.num_heads / same.num_key_value_heads == group]
            if cand.empty:
                cand = same
            h = cand.num_heads.to_numpy()
            pick = int(h[np.argmin(np.abs(np.log(h / heads)))])
            exact = cand[cand.num_heads == pick]
            exact = exact[exact.num_key_value_heads == exact.num_key_value_heads.iloc[0]]
            scale, how = heads / pick, f"scaled from {pick} heads"
        table = exact.pivot_table(index="batch_size", columns=length, values="latency")
        lengths = table.columns.to_numpy(np.float64) + offset
        grid = WorkGrid(table.index.to_numpy(np.float64), lengths,
                       table.to_numpy(np.float64) * MS * scale, growth, tail)
        return grid, how

    def context_grid(self, heads: int, kv_heads: int, head_dim: int) -> tuple[WorkGrid, str]:
        """Prefill attention of ``batch`` sequences of ``length`` tokens, causal, no prefix."""
        return self._grid(self.context, "isl", heads, kv_heads, head_dim, PREFILL_GROWTH, 0, 2.0)

    def generation_grid(self, heads: int, kv_heads: int, head_dim: int) -> tuple[WorkGrid, str]:
        """Decode attention of ``batch`` requests each attending ``length`` tokens."""
        return self._grid(self.generation, "step", heads, kv_heads, head_dim, 1.0, 1, 1.0)


def _bracket(grid: list[int], v: int) -> tuple[list[tuple[int, float]], str]:
    """The measured values around ``v`` and their linear weights."""
    if v in grid:
        return [(v, 1.0)], "table"
    if v > grid[-1]:
        return [(grid[-1], 1.0)], "extrapolated"
    if v < grid[0]:
        return [(grid[0], 1.0)], "extrapolated"
    i = bisect.bisect_right(grid, v)
    lo, hi = grid[i - 1], grid[i]
    t = (v - lo) / (hi - lo)
    return [(lo, 1 - t), (hi, t)], "interpolated"


def _outside(grid: list[int], v: int) -> float:
    """Past the measured sizes a GEMM's time grows with N (or K) as its work does."""
    return v / grid[-1] if v > grid[-1] else 1.0


@functools.cache
def load_tables(gpu_dir: str, stack: str) -> OperatorTables:
    return OperatorTables(table_source(gpu_dir, stack))
