"""What every figure shares: a wrapped title, the latency model's label, legends off the data.

``finish`` writes the title wrapped to the figure's width (never clipped), the label of the
latency model that made the numbers as a footer, and saves with a tight bounding box so
legends placed outside the axes are kept. ``step_summary`` turns a partition that re-splits
thousands of times into a few hundred time bins (time-weighted mean, with the bin's range),
so the timeline stays readable.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


def wrap(text: str, fig_width_in: float, fontsize: float = 10) -> str:
    chars = max(40, int(fig_width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars)) if text else ""


def legend_outside(ax, **kw) -> None:
    """The legend right of the axes, where it covers no data."""
    handles, labels = kw.pop("handles", None), kw.pop("labels", None)
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
            fontsize=kw.pop("fontsize", 8),
            **kw,
        )


def finish(fig, title: str, label: str, path: Path, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    width = fig.get_size_inches()[0]
    fig.suptitle(wrap(title, width), fontsize=10)
    if label:
        fig.text(
            0.01,
            0.0,
            wrap(f"latency model: {label}", width, 7.5),
            fontsize=7.5,
            color="dimgray",
            ha="left",
            va="bottom",
        )
    fig.tight_layout(rect=(0, 0.05 if label else 0, 1, 1))
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def step_summary(
    t: np.ndarray, values: np.ndarray, bins: int = 300
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin a step function (``values[i]`` holds from ``t[i]`` to ``t[i+1]``).

    Returns bin starts, the time-weighted mean in each bin, and its min and max."""
    t = np.asarray(t, dtype=float)
    v = np.asarray(values, dtype=float)
    if t.size < 2:
        return t, v, v, v
    edges = np.linspace(t[0], t[-1], bins + 1)
    widths = np.diff(t)
    area = np.concatenate(([0.0], np.cumsum(v[:-1] * widths)))

    def integral(x: np.ndarray) -> np.ndarray:
        i = np.clip(np.searchsorted(t, x, side="right") - 1, 0, t.size - 1)
        return area[i] + v[i] * (x - t[i])

    span = np.diff(edges)
    mean = np.diff(integral(edges)) / np.where(span > 0, span, 1.0)
    starts = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, t.size - 1)
    lo = np.minimum.reduceat(v, starts[:-1])
    hi = np.maximum.reduceat(v, starts[:-1])
    # a bin also holds the segment running at its end
    lo = np.minimum(lo, v[starts[1:]])
    hi = np.maximum(hi, v[starts[1:]])
    return edges[:-1], mean, lo, hi


def plot_steps(ax, t, values, label: str, color=None, bins: int = 300, lw: float = 1.2) -> None:
    """A step plot, summarised in ``bins`` time bins (mean line, range band) when dense."""
    t = np.asarray(t, dtype=float)
    if t.size <= 2 * bins:
        ax.step(t, values, where="post", lw=lw, label=label, color=color)
        return
    start, mean, lo, hi = step_summary(t, values, bins)
    (line,) = ax.step(start, mean, where="post", lw=lw, label=f"{label} (bin mean)", color=color)
    ax.fill_between(start, lo, hi, step="post", alpha=0.18, color=line.get_color(), lw=0)
