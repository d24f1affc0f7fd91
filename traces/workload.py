"""One table of requests: arrival time, prompt length, output length (and prefix hashes)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from traces.errors import TraceError


@dataclass(frozen=True)
class Workload:
    """Requests in arrival order; times are seconds from the first arrival."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_hashes: tuple[tuple[int, ...], ...] | None = None
    name: str = ""
    source: str = ""
    notes: dict[str, Any] = field(default_factory=dict)
    # Tokens each prefix hash stands for: Mooncake's hash_ids name 512-token blocks.
    prefix_block_tokens: int = 512

    def __post_init__(self) -> None:
        arrival = np.asarray(self.arrival_s, dtype=np.float64)
        prompt = np.asarray(self.prompt_tokens, dtype=np.int64)
        output = np.asarray(self.output_tokens, dtype=np.int64)
        label = self.name or "workload"
        if not (len(arrival) == len(prompt) == len(output)):
            raise TraceError(f"{label}: arrival, prompt and output columns differ in length")
        if self.prefix_hashes is not None and len(self.prefix_hashes) != len(arrival):
            raise TraceError(f"{label}: prefix_hashes has a different length from the requests")
        if self.prefix_block_tokens < 1:
            raise TraceError(f"{label}: prefix_block_tokens must be at least 1")
        if len(arrival) and (np.any(~np.isfinite(arrival)) or np.any(np.diff(arrival) < 0)):
            raise TraceError(f"{label}: arrival times must be finite and non-decreasing")
        if np.any(prompt < 1) or np.any(output < 1):
            raise TraceError(f"{label}: every request needs at least one prompt and output token")
        object.__setattr__(self, "arrival_s", arrival)
        object.__setattr__(self, "prompt_tokens", prompt)
        object.__setattr__(self, "output_tokens", output)

    def __len__(self) -> int:
        return len(self.arrival_s)

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(
            {
                "arrival_s": self.arrival_s,
                "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens,
            }
        )
        if self.prefix_hashes is not None:
            df["prefix_hashes"] = [list(h) for h in self.prefix_hashes]
        return df

    @classmethod
    def from_frame(cls, df: pd.DataFrame, name: str = "", source: str = "") -> Workload:
        hashes = None
        if "prefix_hashes" in df:
            hashes = tuple(tuple(int(x) for x in h) for h in df["prefix_hashes"])
        return cls(
            df["arrival_s"].to_numpy(),
            df["prompt_tokens"].to_numpy(),
            df["output_tokens"].to_numpy(),
            hashes,
            name,
            source,
        )

    def _take(self, index: np.ndarray, arrival: np.ndarray | None = None) -> Workload:
        hashes = None
        if self.prefix_hashes is not None:
            hashes = tuple(self.prefix_hashes[i] for i in index)
        return replace(
            self,
            arrival_s=self.arrival_s[index] if arrival is None else arrival,
            prompt_tokens=self.prompt_tokens[index],
            output_tokens=self.output_tokens[index],
            prefix_hashes=hashes,
        )

    def window(self, start_s: float, end_s: float | None = None) -> Workload:
        """Requests arriving in [start, end), re-based so the window starts at 0."""
        stop = np.inf if end_s is None else end_s
        index = np.flatnonzero((self.arrival_s >= start_s) & (self.arrival_s < stop))
        arrival = self.arrival_s[index] - start_s
        return self._take(index, arrival)

    def scale_rate(self, factor: float) -> Workload:
        """``factor`` times the request rate: arrival times divided by it."""
        if not factor > 0:
            raise TraceError(f"rate scale must be positive, got {factor}")
        return replace(self, arrival_s=self.arrival_s / factor)

    def with_rate(self, rate: float) -> Workload:
        """Rescale arrivals so the mean request rate is ``rate`` requests per second."""
        current = self.rate()
        if not rate > 0:
            raise TraceError(f"rate must be positive, got {rate}")
        if not current > 0:
            raise TraceError(
                f"{self.name or 'workload'}: all requests arrive at once; no rate to scale"
            )
        return self.scale_rate(rate / current)

    def first(self, n: int) -> Workload:
        if n < 0:
            raise TraceError(f"the number of requests must be >= 0, got {n}")
        return self._take(np.arange(min(n, len(self))))

    def sample(self, n: int, seed: int = 0) -> Workload:
        """A random subset of ``n`` requests, in arrival order."""
        if n > len(self):
            raise TraceError(f"cannot sample {n} requests from {len(self)}")
        index = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self._take(index)

    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    def rate(self) -> float:
        span = self.duration_s()
        return (len(self) - 1) / span if span > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": len(self),
            "duration_s": self.duration_s(),
            "rate_rps": self.rate(),
        }
        for col in ("prompt_tokens", "output_tokens"):
            values = getattr(self, col)
            if len(values):
                out[f"{col}_mean"] = float(values.mean())
                out[f"{col}_p50"] = float(np.percentile(values, 50))
                out[f"{col}_p99"] = float(np.percentile(values, 99))
        return out
