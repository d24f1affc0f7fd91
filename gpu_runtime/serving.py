"""The engine behind the HTTP server: admission, a bounded queue, and per-request listeners.

Requests are admitted (checked against the model's length and the KV cache, counted against
``max_queue``) on the caller's thread and handed to the engine loop's thread. The queue holds
requests that have not been scheduled yet; when it is full a new request is refused at once
(the server answers 429), never left to wait without bound.
"""

from __future__ import annotations

import itertools
import threading

from gpu_runtime.engine import Engine
from gpu_runtime.jobs import Job, JobListener
from gpu_runtime.loop import EngineLoop
from gpu_runtime.prom import ServerMetrics, prefix_cache_metrics
from gpu_runtime.sampling import SamplingParams
from gpu_runtime.tokenizer import Tokenizer
from policies import Request


class QueueFull(Exception):
    pass


class TooLong(ValueError):
    pass


class ServingEngine:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Tokenizer,
        model_name: str,
        vocab_size: int,
        max_queue: int = 256,
    ) -> None:
        self.engine = engine
        self.vocab_size = vocab_size
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_queue = max_queue
        self.loop = EngineLoop(engine)
        self.loop.on_error = self._fail_all
        self.metrics = ServerMetrics()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._queued = 0
        self._listeners: dict[int, JobListener] = {}
        self._started: set[int] = set()

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len or self.engine.kv.capacity_tokens

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    # ----------------------------------------------------------------- admission
    def check_length(self, prompt_tokens: int, max_tokens: int) -> None:
        limit = self.engine.max_model_len
        if limit is not None and prompt_tokens + max_tokens > limit:
            raise TooLong(
                f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = "
                f"{prompt_tokens + max_tokens} exceeds the model's maximum length of {limit} "
                "tokens; shorten the prompt or lower max_tokens"
            )
        capacity = self.engine.kv.capacity_tokens
        if prompt_tokens + max_tokens - 1 > capacity:
            raise TooLong(
                f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) needs more KV "
                f"cache than the whole cache holds ({capacity} tokens); shorten the request"
            )

    def default_max_tokens(self, prompt_tokens: int) -> int:
        room = min(
            self.max_model_len - prompt_tokens, self.engine.kv.capacity_tokens + 1 - prompt_tokens
        )
        if room < 1:
            raise TooLong(
                f"prompt ({prompt_tokens} tokens) leaves no room to generate within the model's "
                f"maximum length of {self.max_model_len} tokens; shorten the prompt"
            )
        return room

    def submit(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        sampling: SamplingParams,
        listener: JobListener,
        ignore_eos: bool = False,
    ) -> Job:
        self.check_length(len(prompt_ids), max_tokens)
        with self._lock:
            if self._queued >= self.max_queue:
                self.metrics.count_request("queue_full")
                raise QueueFull(
                    f"the server is at capacity: {self._queued} requests are queued "
                    f"(--max-queue {self.max_queue}); retry later"
                )
            self._queued += 1
        rid = next(self._ids)
        req = Request(
            rid, self.engine.clock.now(), len(prompt_ids), max_tokens, prompt_ids=list(prompt_ids)
        )
        job = Job(req, sampling, ignore_eos, self.tokenizer.eos_ids, listener=self)
        self._listeners[rid] = listener
        self.loop.submit(job)
        return job

    def abort(self, job: Job) -> None:
        self.loop.abort(job.request.id)

    # ----------------------------------------------------------------- engine thread
    def started(self, job: Job) -> None:
        rid = job.request.id
        with self._lock:
            if rid not in self._started:
                self._started.add(rid)
                self._queued -= 1
        self.metrics.queue_wait.observe(job.request.scheduled_s - job.request.arrival_s)
        self._listeners[rid].started(job)

    def tokens(self, job: Job, ids: list[int]) -> None:
        req, m = job.request, self.metrics
        with m.lock:
            m.generation_tokens += len(ids)
            if len(req.token_times) == 1:
                m.ttft.observe(req.token_times[0] - req.arrival_s)
            else:
                m.tbt.observe(req.token_times[-1] - req.token_times[-2])
        self._listeners[req.id].tokens(job, ids)

    def finished(self, job: Job) -> None:
        req = job.request
        with self._lock:
            if req.id in self._started:
                self._started.discard(req.id)
            else:
                self._queued -= 1
        m = self.metrics
        m.count_request(job.finish_reason or "unknown")
        if job.finish_reason in ("length", "stop"):
            with m.lock:
                m.prompt_tokens += req.prompt_tokens
            m.e2e.observe(req.finish_s - req.arrival_s)
        listener = self._listeners.pop(req.id, None)
        if listener is not None:
            listener.finished(job)

    def _fail_all(self, exc: BaseException) -> None:
        for rid in list(self._listeners):
            job = self.engine.jobs.get(rid)
            listener = self._listeners.pop(rid, None)
            if job is not None and listener is not None:
                job.finish_reason = "error"
                listener.finished(job)

    # ----------------------------------------------------------------- metrics
    def engine_metrics(self) -> dict[str, tuple[str, str, float]]:
        """Name -> (Prometheus kind, help, value), read from the engine now."""
        e = self.engine
        p = e.partition
        g, c = "gauge", "counter"
        return {
            "twin_queue_length": (g, "Requests admitted but not yet scheduled.", self._queued),
            "twin_waiting_requests": (g, "Requests waiting in the engine.", len(e.waiting)),
            "twin_running_requests": (g, "Requests holding KV cache.", len(e.running)),
            "twin_kv_cache_usage_ratio": (g, "Fraction of KV blocks in use.", e.kv.usage),
            "twin_kv_cache_free_blocks": (g, "Free KV blocks.", e.kv.free_blocks),
            "twin_decode_sms": (g, "SMs running decode work.", p.decode_sms or p.mixed_sms),
            "twin_engine_up": (g, "1 while the engine loop runs.", float(self.loop.alive)),
            "twin_preemptions_total": (c, "Recompute preemptions.", e.stats.preemptions),
            "twin_iterations_total": (c, "Batches executed.", e.stats.iterations),
            "twin_partition_changes_total": (c, "Partition changes.", e.stats.partition_changes),
            **prefix_cache_metrics(e.kv),
        }
