"""/metrics under vLLM's names, types and labels, so dashboards built for vLLM read twin.

Names follow vLLM's V1 engine (docs/design/metrics.md and vllm/v1/metrics/loggers.py): every
sample carries ``model_name`` and ``engine="0"``. Latency histograms share twin's buckets;
``vllm:request_success_total`` counts finished requests by ``finished_reason``. Where twin
has more to say (the SM partition, lane by lane) it keeps its own ``twin_`` names beside them.
Per request, as vLLM defines them: queue time is arrival to first schedule, prefill time is
first schedule to first token, decode time is first to last token, inference time is first
schedule to last token.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

from gpu_runtime.prom import Histogram

if TYPE_CHECKING:
    from gpu_runtime.jobs import Job
    from gpu_runtime.serving import ServingEngine

TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class VllmRequestStats:
    """The per-request histograms vLLM exports that twin's own metrics do not have."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue = Histogram()
        self.prefill = Histogram()
        self.decode = Histogram()
        self.inference = Histogram()
        self.prompt_tokens = Histogram(TOKEN_BUCKETS)
        self.generation_tokens = Histogram(TOKEN_BUCKETS)
        self.success: dict[str, int] = {}
        self.last_prefill_s = math.nan
        self.last_decode_s = math.nan

    def finished(self, job: Job, reason: str | None) -> None:
        reason = reason or "unknown"
        if reason not in ("stop", "length", "abort"):
            return
        req = job.request
        with self.lock:
            self.success[reason] = self.success.get(reason, 0) + 1
            if reason == "abort" or not req.token_times:
                return
            first, last = req.token_times[0], req.token_times[-1]
            self.queue.observe(req.scheduled_s - req.arrival_s)
            self.prefill.observe(first - req.scheduled_s)
            self.decode.observe(last - first)
            self.inference.observe(last - req.scheduled_s)
            self.prompt_tokens.observe(req.prompt_tokens)
            self.generation_tokens.observe(len(req.token_times))
            self.last_prefill_s = first - req.scheduled_s
            self.last_decode_s = last - first


def render_vllm(serving: ServingEngine) -> str:
    """The vLLM-named families and twin's partition gauges, in the Prometheus text format."""
    labels = f'model_name="{_escape(serving.model_name)}",engine="0"'
    e, m, v = serving.engine, serving.metrics, serving.vllm_stats
    lines: list[str] = []

    def scalar(name: str, kind: str, text: str, value: float) -> None:
        lines.extend(_family(name, kind, text))
        lines.append(f"{name}{{{labels}}} {value:g}")

    scalar("vllm:num_requests_running", "gauge", "Requests in the running batch.", len(e.running))
    scalar("vllm:num_requests_waiting", "gauge", "Requests waiting to run.", len(e.waiting))
    scalar(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "Fraction of KV-cache blocks in use (0 to 1).",
        e.kv.usage,
    )
    with m.lock:
        prompt, generated = m.prompt_tokens, m.generation_tokens
        shared = [
            ("vllm:time_to_first_token_seconds", m.ttft, "Time to first token."),
            ("vllm:inter_token_latency_seconds", m.tbt, "Time between output tokens."),
            ("vllm:e2e_request_latency_seconds", m.e2e, "Arrival to last token."),
        ]
        for name, hist, text in shared:
            lines.extend(_family(name, "histogram", text))
            lines.extend(_histogram(name, hist, labels))
    scalar("vllm:prompt_tokens_total", "counter", "Prompt tokens processed.", prompt)
    scalar("vllm:generation_tokens_total", "counter", "Tokens generated.", generated)
    scalar(
        "vllm:num_preemptions_total",
        "counter",
        "Preemptions by the scheduler.",
        e.stats.preemptions,
    )
    with v.lock:
        lines.extend(_family("vllm:request_success_total", "counter", "Finished requests."))
        for reason in ("stop", "length", "abort"):
            count = v.success.get(reason, 0)
            lines.append(
                f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {count}'
            )
        own = [
            ("vllm:request_queue_time_seconds", v.queue, "Time waiting before the first schedule."),
            ("vllm:request_prefill_time_seconds", v.prefill, "First schedule to first token."),
            ("vllm:request_decode_time_seconds", v.decode, "First token to last token."),
            ("vllm:request_inference_time_seconds", v.inference, "First schedule to last token."),
            ("vllm:request_prompt_tokens", v.prompt_tokens, "Prompt tokens per request."),
            ("vllm:request_generation_tokens", v.generation_tokens, "Output tokens per request."),
        ]
        for name, hist, text in own:
            lines.extend(_family(name, "histogram", text))
            lines.extend(_histogram(name, hist, labels))
        last = [
            (
                "twin_last_request_prefill_seconds",
                v.last_prefill_s,
                "Prefill time of the latest finished request.",
            ),
            (
                "twin_last_request_decode_seconds",
                v.last_decode_s,
                "Decode time of the latest finished request.",
            ),
        ]
    for name, value, text in last:
        lines.extend(_family(name, "gauge", text))
        lines.append(f"{name}{{{labels}}} {value:g}")
    p = e.partition
    lines.extend(_family("twin_partition_sms", "gauge", "SMs of each lane of the current split."))
    for lane, sms in (("mixed", p.mixed_sms), ("prefill", p.prefill_sms), ("decode", p.decode_sms)):
        lines.append(f'twin_partition_sms{{{labels},lane="{lane}"}} {sms}')
    return "\n".join(lines) + "\n"


def _histogram(name: str, hist: Histogram, labels: str) -> list[str]:
    out, running = [], 0
    for bound, count in zip(hist.buckets, hist.counts, strict=True):
        running += count
        out.append(f'{name}_bucket{{{labels},le="{float(bound)!r}"}} {running}')
    out.append(f'{name}_bucket{{{labels},le="+Inf"}} {hist.n}')
    out.append(f"{name}_sum{{{labels}}} {hist.total:.6f}")
    out.append(f"{name}_count{{{labels}}} {hist.n}")
    return out


def _family(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
