"""OpenAI-compatible HTTP server over a ``ServingEngine`` (FastAPI; run with uvicorn).

Endpoints: ``/v1/completions`` and ``/v1/chat/completions`` (streaming as server-sent events
ending in ``data: [DONE]``), ``/v1/models``, ``/health`` and ``/metrics`` (Prometheus text).
A client that disconnects aborts its request, which frees its KV cache. With an API key, the
``/v1`` endpoints want ``Authorization: Bearer KEY`` (as vLLM's ``--api-key``); ``/health``
and ``/metrics`` stay open for probes and scrapers. A ``stop`` string ends a request where
its text first appears (the engine stops generating for it) with finish_reason ``stop``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from gpu_runtime.auth import ApiKeyMiddleware
from gpu_runtime.jobs import Job
from gpu_runtime.protocol import (
    ApiError,
    GenerationRequest,
    Responder,
    parse_chat,
    parse_completion,
    parse_json,
    sse,
    usage,
)
from gpu_runtime.serving import QUEUE_FULL, QueueFull, ServingEngine, TooLong
from gpu_runtime.stops import StopMatcher
from gpu_runtime.tokenizer import IncrementalDecoder
from gpu_runtime.vllm_metrics import render_vllm

DISCONNECT_POLL_S = 0.25
RETRY_AFTER_S = 1  # what a 429 asks the client to wait before trying again


def queue_full(message: str) -> ApiError:
    return ApiError(
        429, message, kind="rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


class _Bridge:
    """Carries one job's events from the engine thread into the handler's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def _put(self, item: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            pass  # the event loop has closed: nobody is listening any more

    def started(self, job: Job) -> None:
        pass

    def admitted(self, job: Job) -> None:
        self._put(("admitted", None))

    def tokens(self, job: Job, ids: list[int]) -> None:
        self._put(("tokens", ids))

    def finished(self, job: Job) -> None:
        self._put(("finished", job.finish_reason))


def create_app(
    serving: ServingEngine, manage_engine: bool = True, api_key: str | None = None
) -> FastAPI:
    """The app; with ``manage_engine`` its lifespan starts and stops the engine loop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            serving.start()
        try:
            yield
        finally:
            if manage_engine:
                serving.stop()

    app = FastAPI(title="twin runtime", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)

    @app.get("/health")
    async def health() -> JSONResponse:
        if serving.loop.error is not None:
            return JSONResponse({"status": "error", "error": str(serving.loop.error)}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        card = {
            "id": serving.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "twin",
            "max_model_len": serving.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = serving.metrics.render(serving.engine_metrics()) + render_vllm(serving)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse_json(await request.body())
        gen = parse_completion(body, serving.tokenizer, serving.vocab_size, serving.model_name)
        return await _serve(serving, request, gen, Responder(serving.model_name, chat=False))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = parse_json(await request.body())
        gen = parse_chat(body, serving.tokenizer, serving.model_name)
        return await _serve(serving, request, gen, Responder(serving.model_name, chat=True))

    return app


async def _serve(
    serving: ServingEngine, request: Request, gen: GenerationRequest, out: Responder
) -> Response:
    if serving.loop.error is not None:
        raise ApiError(503, f"the engine stopped: {serving.loop.error}")
    bridge = _Bridge(asyncio.get_running_loop())
    prompt = len(gen.prompt_ids)
    try:
        max_tokens = gen.max_tokens or serving.default_max_tokens(prompt)
        job = serving.submit(gen.prompt_ids, max_tokens, gen.sampling, bridge, gen.ignore_eos)
    except TooLong as exc:
        raise ApiError(400, str(exc), "max_tokens") from None
    except QueueFull as exc:
        raise queue_full(str(exc)) from None
    decoder = IncrementalDecoder(serving.tokenizer)
    stops = StopMatcher(gen.stop)
    if gen.stream:
        # Wait for the engine's admission so a refused request gets a 429, not a 200 stream.
        first = await bridge.queue.get()
        if first == ("finished", QUEUE_FULL):
            _raise_for(QUEUE_FULL)
        return StreamingResponse(
            _stream(serving, job, bridge, decoder, stops, out, gen.include_usage, first),
            media_type="text/event-stream",
        )
    loop = asyncio.get_running_loop()
    check_at = loop.time() + DISCONNECT_POLL_S
    while True:
        try:
            item = await asyncio.wait_for(bridge.queue.get(), max(0.0, check_at - loop.time()))
        except TimeoutError:
            item = None
        if loop.time() >= check_at:
            # Checked on a timer, not only when idle: tokens may keep arriving for a client
            # that is long gone.
            if await request.is_disconnected():
                serving.abort(job)
                return Response(status_code=499)
            check_at = loop.time() + DISCONNECT_POLL_S
        if item is None:
            continue
        kind, payload = item
        if kind == "tokens":
            stops.push(decoder.push(payload))
            if stops.stopped:
                serving.stop_early(job)
                done = usage(prompt, _completion(job))
                return JSONResponse(out.full(stops.text, "stop", done))
        elif kind == "finished":
            _raise_for(payload)
            stops.push(decoder.push([], final=True), final=True)
            reason = "stop" if stops.stopped else payload
            return JSONResponse(out.full(stops.text, reason, usage(prompt, _completion(job))))


async def _stream(
    serving, job, bridge, decoder, stops, out: Responder, include_usage: bool, first
):
    done = False
    try:
        if out.chat:
            yield out.chunk(None, role=True)
        while True:
            kind, payload = first if first is not None else await bridge.queue.get()
            first = None
            if kind == "admitted":
                continue
            if kind == "tokens":
                delta = stops.push(decoder.push(payload))
                if not stops.stopped:
                    if delta:
                        yield out.chunk(delta)
                    continue
                serving.stop_early(job)
                payload = "stop"
            done = True
            if payload == "error":
                yield sse(ApiError(500, "the engine failed while serving this request").body())
            else:
                tail = delta if stops.stopped else stops.push(decoder.push([], final=True), True)
                yield out.chunk(tail, reason="stop" if stops.stopped else payload)
                if include_usage:
                    yield out.usage_chunk(usage(job.request.prompt_tokens, _completion(job)))
            yield "data: [DONE]\n\n"
            return
    finally:
        if not done:
            serving.abort(job)  # the client went away mid-stream


def _completion(job: Job) -> int:
    return len(job.output_ids)


def _raise_for(reason: str) -> None:
    if reason == QUEUE_FULL:
        raise queue_full("the server is at capacity; retry later")
    if reason == "error":
        raise ApiError(500, "the engine failed while serving this request")
    if reason == "abort":
        raise ApiError(503, "the request was aborted (the server is shutting down)")
