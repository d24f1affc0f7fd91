"""OpenAI completions and chat requests: validation and the JSON the server sends back.

A request the server cannot honour exactly (several choices, log-probabilities, penalties)
is refused with a 400 naming the field, rather than silently answered differently.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from gpu_runtime.chat_template import ChatTemplateError
from gpu_runtime.sampling import SEED_MAX, SEED_MIN, SamplingParams
from gpu_runtime.stops import StopError, parse_stop
from gpu_runtime.tokenizer import Tokenizer
from policies.numbers import check_number


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int | None  # None: up to the model's length
    sampling: SamplingParams
    stream: bool
    include_usage: bool
    ignore_eos: bool
    stop: tuple[str, ...] = ()


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to be a request") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def parse_completion(body: dict[str, Any], tokenizer: Tokenizer, vocab: int, model: str):
    _check_common(body, model)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(_text(prompt, "prompt"))
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ApiError(
                400,
                f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab - 1})",
                "prompt",
            )
        ids = list(prompt)
    else:
        raise ApiError(400, "prompt must be a non-empty string or a list of token ids", "prompt")
    if not ids:
        raise ApiError(400, "prompt is empty", "prompt")
    return _generation(body, ids, default_max=16)


def parse_chat(body: dict[str, Any], tokenizer: Tokenizer, model: str) -> GenerationRequest:
    _check_common(body, model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] needs a string 'role'", "messages")
        role = _text(m["role"], f"messages[{i}].role")
        turns.append(
            {
                "role": role,
                "content": _text(_content(m.get("content"), i), f"messages[{i}].content"),
            }
        )
    try:
        ids = tokenizer.chat_ids(turns)
    except ChatTemplateError as exc:
        raise ApiError(400, str(exc), "messages") from None
    if "max_completion_tokens" in body and "max_tokens" not in body:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    return _generation(body, ids, default_max=None)


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    raise ApiError(
        400, f"messages[{i}].content must be a string or a list of text parts", "messages"
    )


def _check_common(body: dict[str, Any], model: str) -> None:
    name = body.get("model")
    if name is not None and name != model:
        raise ApiError(
            404,
            f"model {name!r} is not served here; this server serves {model!r}",
            "model",
            "not_found_error",
        )
    unsupported = (
        ("n", lambda v: v not in (None, 1), "only n=1 is supported"),
        ("best_of", lambda v: v not in (None, 1), "only best_of=1 is supported"),
        ("logprobs", lambda v: v not in (None, False), "logprobs are not supported"),
        ("echo", lambda v: v not in (None, False), "echo is not supported"),
        ("tools", lambda v: v not in (None, []), "tools are not supported"),
        ("logit_bias", lambda v: v not in (None, {}), "logit_bias is not supported"),
        (
            "response_format",
            lambda v: v not in (None, {"type": "text"}),
            'only response_format {"type": "text"} is supported',
        ),
        ("presence_penalty", lambda v: v not in (None, 0, 0.0), "penalties are not supported"),
        ("frequency_penalty", lambda v: v not in (None, 0, 0.0), "penalties are not supported"),
    )
    for field, bad, why in unsupported:
        if field in body and bad(body[field]):
            raise ApiError(400, f"{field}: {why}", field)


def _generation(body: dict[str, Any], ids: list[int], default_max: int | None):
    max_tokens = body.get("max_tokens", default_max)
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise ApiError(400, "max_tokens must be a positive integer", "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise ApiError(400, "top_p must be greater than 0", "top_p")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not SEED_MIN <= seed <= SEED_MAX):
        raise ApiError(400, f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}]", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, "ignore_eos must be true or false", "ignore_eos")
    try:
        stop = parse_stop(body.get("stop"))
    except StopError as exc:
        raise ApiError(400, str(exc), "stop") from None
    return GenerationRequest(
        ids,
        max_tokens,
        SamplingParams(temperature, top_p, seed),
        stream,
        bool(options.get("include_usage", False)),
        ignore_eos,
        stop,
    )


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    try:
        return float(check_number(value, key, low=lo, high=hi))
    except ValueError:
        raise ApiError(400, f"{key} must be a number in [{lo:g}, {hi:g}]", key) from None


def _text(value: str, field: str) -> str:
    """A string the tokenizer can take: JSON may carry lone surrogates that UTF-8 cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(
            400,
            f"{field} holds an unpaired surrogate at position {exc.start}; send UTF-8 text",
            field,
        ) from None
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------- responses
class Responder:
    """Builds the response objects of one request (ids and timestamps fixed at creation)."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, text: str, reason: str, usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
            return {**self._base("chat.completion"), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {**self._base("text_completion"), "choices": [choice], "usage": usage}

    def chunk(self, text: str | None, reason: str | None = None, role: bool = False) -> str:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            data = {**self._base("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
            data = {**self._base("text_completion"), "choices": [choice]}
        return sse(data)

    def usage_chunk(self, usage: dict[str, int]) -> str:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return sse({**self._base(obj), "choices": [], "usage": usage})


def sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
