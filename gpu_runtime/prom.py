"""Server metrics in the Prometheus text format (counters, gauges, latency histograms)."""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        if math.isnan(value):
            return
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.n}")
        return out


class ServerMetrics:
    """Updated from the engine thread and the HTTP handlers; rendered on /metrics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft = Histogram()
        self.tbt = Histogram()
        self.e2e = Histogram()
        self.queue_wait = Histogram()

    def count_request(self, outcome: str) -> None:
        with self.lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def render(self, engine_metrics: dict[str, tuple[str, str, float]]) -> str:
        """``engine_metrics``: name -> (kind, help, value), read from the engine when scraped."""
        with self.lock:
            lines = _family("twin_requests_total", "counter", "Requests by outcome.")
            for outcome in sorted(self.requests):
                lines.append(f'twin_requests_total{{outcome="{outcome}"}} {self.requests[outcome]}')
            lines += _family(
                "twin_prompt_tokens_total", "counter", "Prompt tokens of completed requests."
            )
            lines.append(f"twin_prompt_tokens_total {self.prompt_tokens}")
            lines += _family("twin_generation_tokens_total", "counter", "Generated tokens.")
            lines.append(f"twin_generation_tokens_total {self.generation_tokens}")
            for name, (kind, text, value) in engine_metrics.items():
                lines += _family(name, kind, text)
                lines.append(f"{name} {_number(value)}")
            for name, hist, text in (
                ("twin_time_to_first_token_seconds", self.ttft, "Time to first token."),
                ("twin_time_between_tokens_seconds", self.tbt, "Gap between output tokens."),
                ("twin_e2e_request_latency_seconds", self.e2e, "Arrival to last token."),
                ("twin_queue_wait_seconds", self.queue_wait, "Arrival to first schedule."),
            ):
                lines += _family(name, "histogram", text)
                lines += hist.lines(name)
        return "\n".join(lines) + "\n"


def prefix_cache_metrics(kv: object) -> dict[str, tuple[str, str, float]]:
    """vLLM v1's prefix-cache counters, under its names (prometheus_client adds ``_total``).

    Queries and hits count tokens, as vLLM's do: every admission looks its prompt up (after a
    preemption, the prompt plus the tokens generated so far). Zero when caching is off.
    """
    stats = getattr(kv, "stats", None)
    queries, hits = (stats.queries, stats.hits) if stats is not None else (0, 0)
    c = "counter"
    return {
        "vllm:prefix_cache_queries_total": (c, "Prefix cache queries, in tokens.", queries),
        "vllm:prefix_cache_hits_total": (c, "Prefix cache hits, in tokens.", hits),
    }


def _number(value: float) -> str:
    """Counters exactly (``:g`` would round a large one), other values compactly."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def _family(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
