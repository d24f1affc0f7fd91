"""The engine behind the HTTP server: admission, a bounded queue, and per-request listeners.

Requests are checked against the model's length and the KV cache on the caller's thread and
handed to the engine loop's thread. ``max_queue`` bounds the requests the engine has admitted
but not scheduled: after the engine has taken every arrival it can start, the newest beyond
the bound are refused (the server answers 429), so a burst into an idle engine is served,
and nothing waits without bound. A failure in one request's listener fails that request
alone.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

from gpu_runtime.engine import Engine
from gpu_runtime.jobs import Job, JobListener
from gpu_runtime.loop import EngineLoop
from gpu_runtime.prom import ServerMetrics, prefix_cache_metrics
from gpu_runtime.sampling import SamplingParams
from gpu_runtime.tokenizer import Tokenizer
from gpu_runtime.vllm_metrics import VllmRequestStats
from policies import Request, Status

log = logging.getLogger("twin.serving")
QUEUE_FULL = "queue_full"  # finish reason of a request refused after the engine's admission


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
        self.loop.on_request_error = self._failed_alone
        self.metrics = ServerMetrics()
        self.vllm_stats = VllmRequestStats()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._queued = 0
        self._listeners: dict[int, JobListener] = {}
        self._started: set[int] = set()
        self._unchecked: list[Job] = []  # submitted, not yet counted against max_queue
        self._refused: set[int] = set()
        self._failed: set[int] = set()
        # Called on the engine's thread when it cannot go on (the server then exits non-zero).
        self.on_fatal: Callable[[BaseException], None] | None = None
        self._stopped: set[int] = set()

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
            # More than the engine could ever start at once plus the queue: refuse now rather
            # than hand the engine a burst it will refuse anyway.
            if self._queued >= self.max_queue + self.start_room():
                self.metrics.count_request(QUEUE_FULL)
                raise QueueFull(self._full_message(self._queued))
            self._queued += 1
            rid = next(self._ids)
            req = Request(
                rid,
                self.engine.clock.now(),
                len(prompt_ids),
                max_tokens,
                prompt_ids=list(prompt_ids),
            )
            job = Job(req, sampling, ignore_eos, self.tokenizer.eos_ids, listener=self)
            self._listeners[rid] = listener
            self._unchecked.append(job)
        self.loop.submit(job)
        self.loop.call(self._admit)  # runs after the engine has taken the arrival
        return job

    def start_room(self) -> int:
        """How many requests the policy may run at once (its max_num_seqs)."""
        params = getattr(self.engine.policy, "params", None)
        for name in ("max_num_seqs", "max_running_requests"):
            value = getattr(params, name, None)
            if isinstance(value, int):
                return value
        return 256

    def _full_message(self, queued: int) -> str:
        return (
            f"the server is at capacity: {queued} requests wait to be scheduled "
            f"(--max-queue {self.max_queue}); retry later"
        )

    def _admit(self) -> None:
        """Engine thread: count what the engine admitted but could not start; refuse the excess."""
        with self._lock:
            fresh, self._unchecked = self._unchecked, []
        waiting = [r for r in self.engine.waiting if r.id not in self._started]
        # Requests that will get a running slot as soon as the next batch forms are not queued.
        free_slots = max(0, self.start_room() - len(self.engine.running))
        excess = len(waiting) - free_slots - self.max_queue
        refused = {r.id for r in waiting[-excess:]} if excess > 0 else set()
        for job in fresh:
            rid = job.request.id
            if rid in refused:
                self._refused.add(rid)
                self.engine.abort(rid)
            elif job.request.status is not Status.FINISHED:
                self._call(job, "admitted")

    def abort(self, job: Job) -> None:
        self.loop.abort(job.request.id)

    def stop_early(self, job: Job) -> None:
        """A stop string ended the request: no more tokens; counted as finished (``stop``)."""
        with self._lock:
            if job.request.id in self._listeners:  # not finished already
                self._stopped.add(job.request.id)
        self.abort(job)

    def _take_stopped(self, rid: int) -> bool:
        with self._lock:
            if rid in self._stopped:
                self._stopped.discard(rid)
                return True
            return False

    # ----------------------------------------------------------------- engine thread
    def started(self, job: Job) -> None:
        rid = job.request.id
        with self._lock:
            if rid not in self._started:
                self._started.add(rid)
                self._queued -= 1
        self.metrics.queue_wait.observe(job.request.scheduled_s - job.request.arrival_s)
        self._call(job, "started")

    def tokens(self, job: Job, ids: list[int]) -> None:
        req, m = job.request, self.metrics
        with m.lock:
            m.generation_tokens += len(ids)
            if len(req.token_times) == 1:
                m.ttft.observe(req.token_times[0] - req.arrival_s)
            else:
                m.tbt.observe(req.token_times[-1] - req.token_times[-2])
        self._call(job, "tokens", ids)

    def finished(self, job: Job) -> None:
        req = job.request
        if req.id in self._refused:
            self._refused.discard(req.id)
            job.finish_reason = QUEUE_FULL
        elif req.id in self._failed:
            self._failed.discard(req.id)
            job.finish_reason = "error"
        with self._lock:
            if req.id in self._started:
                self._started.discard(req.id)
            else:
                self._queued -= 1
        m = self.metrics
        # a stop string ends a request by aborting it in the engine; it finished all the same
        reason = "stop" if self._take_stopped(req.id) else job.finish_reason
        m.count_request(reason or "unknown")
        if reason in ("length", "stop"):
            with m.lock:
                m.prompt_tokens += req.prompt_tokens
            m.e2e.observe(req.finish_s - req.arrival_s)
        self.vllm_stats.finished(job, reason)
        self._call(job, "finished")
        self._listeners.pop(req.id, None)

    def _call(self, job: Job, event: str, *args: object) -> None:
        """Tell a request's listener; if it fails, log it and fail that request alone."""
        listener = self._listeners.get(job.request.id)
        handler = getattr(listener, event, None)
        if handler is None:
            return
        try:
            handler(job, *args)
        except Exception:
            log.exception("request %d: its %s event failed; failing it", job.request.id, event)
            if event != "finished":
                self._failed.add(job.request.id)
                self.loop.abort(job.request.id)  # not re-entrantly from inside a batch

    def _failed_alone(self, request_id: int) -> None:
        self._failed.add(request_id)

    def _fail_all(self, exc: BaseException) -> None:
        if self.on_fatal is not None:
            self.on_fatal(exc)
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
