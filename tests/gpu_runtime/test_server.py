"""The OpenAI-compatible server end to end: uvicorn in a thread, httpx as the client."""

import json
import socket
import threading
import time

import pytest

torch = pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from gpu_runtime.build import build_runtime  # noqa: E402
from gpu_runtime.config import RuntimeConfig  # noqa: E402
from gpu_runtime.server import create_app  # noqa: E402
from gpu_runtime.serving import ServingEngine  # noqa: E402
from gpu_runtime.tokenizer import ByteTokenizer  # noqa: E402
from policies import Status  # noqa: E402
from tests.gpu_runtime.tiny import tiny_llama  # noqa: E402

MAX_LEN = 2048


class Served:
    def __init__(self, max_queue: int = 64, blocks: int = 256, manage_engine: bool = True):
        settings = RuntimeConfig(device="cpu", num_kv_blocks=blocks, max_model_len=MAX_LEN)
        self.rt = build_runtime(tiny_llama(vocab=512), settings, "vllm")
        self.serving = ServingEngine(self.rt.engine, ByteTokenizer(512), "tiny", 512, max_queue)
        app = create_app(self.serving, manage_engine=manage_engine)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def served():
    s = Served()
    yield s
    s.close()


def post(served, path, body, **kw):
    return httpx.post(served.url + path, json=body, timeout=30, **kw)


def sse_events(lines) -> list:
    events = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def wait_until(predicate, timeout=10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_health_models_and_metrics(served):
    assert httpx.get(served.url + "/health").json() == {"status": "ok"}
    models = httpx.get(served.url + "/v1/models").json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == MAX_LEN
    post(served, "/v1/completions", {"prompt": "metrics", "max_tokens": 3})
    text = httpx.get(served.url + "/metrics").text
    for name in (
        "twin_requests_total",
        "twin_generation_tokens_total",
        "twin_queue_length",
        "twin_kv_cache_usage_ratio",
        "twin_time_to_first_token_seconds_bucket",
        "twin_time_between_tokens_seconds_count",
        "twin_e2e_request_latency_seconds_sum",
    ):
        assert f"\n{name}" in text, name


def test_completion_is_deterministic_when_greedy_and_counts_usage(served):
    body = {"prompt": "Hello there", "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    a, b = post(served, "/v1/completions", body), post(served, "/v1/completions", body)
    assert a.status_code == 200, a.text
    ja, jb = a.json(), b.json()
    assert ja["object"] == "text_completion" and ja["choices"][0]["finish_reason"] == "length"
    assert ja["usage"] == {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}
    assert ja["choices"][0]["text"] == jb["choices"][0]["text"]
    ids = post(served, "/v1/completions", {**body, "prompt": ByteTokenizer(512).encode("Hi")})
    assert ids.json()["usage"]["prompt_tokens"] == 3


def test_streaming_completion_sends_chunks_usage_and_done(served):
    body = {
        "prompt": "stream",
        "max_tokens": 12,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
        "seed": 3,
    }
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["completion_tokens"] == 12 and events[-2]["choices"] == []
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-3])
    full = post(served, "/v1/completions", {**body, "stream": False}).json()
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == full["choices"][0]["text"]


def test_streaming_chat_starts_with_the_assistant_role(served):
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", served.url + "/v1/chat/completions", json=body, timeout=30) as r:
        events = sse_events(r.iter_lines())
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert events[-2]["choices"][0]["finish_reason"] == "length" and events[-1] == "[DONE]"
    chat = post(served, "/v1/chat/completions", {**body, "stream": False}).json()
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        ({"max_tokens": 3}, 400, "prompt must be"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens must be a positive integer"),
        ({"prompt": "x", "temperature": 9}, 400, "temperature must be a number in [0, 2]"),
        ({"prompt": "x", "n": 2}, 400, "only n=1"),
        ({"prompt": "x", "stop": ["\n"]}, 400, "stop sequences are not supported"),
        ({"prompt": [1, 9999]}, 400, "outside the vocabulary"),
        ({"prompt": "x", "model": "gpt-9"}, 404, "'gpt-9' is not served here"),
        (
            {"prompt": "x" * 100, "max_tokens": MAX_LEN},
            400,
            "prompt (101 tokens) + max_tokens (2048) = 2149 exceeds the model's maximum length",
        ),
    ],
)
def test_bad_requests_get_a_reason(served, body, status, message):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(served.url + "/v1/completions", timeout=30, **kw)
    assert r.status_code == status
    assert message in r.json()["error"]["message"]


def test_a_request_larger_than_the_kv_cache_is_refused():
    small = Served(blocks=8)  # 128 tokens of KV
    try:
        r = post(small, "/v1/completions", {"prompt": "y" * 100, "max_tokens": 100})
        assert r.status_code == 400 and "more KV cache than the whole cache" in r.text
    finally:
        small.close()


def test_a_full_queue_answers_429():
    stalled = Served(max_queue=1, manage_engine=False)  # nothing drains the queue
    try:
        body = {"prompt": "wait", "max_tokens": 4, "stream": True}
        with httpx.stream("POST", stalled.url + "/v1/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            second = post(stalled, "/v1/completions", {"prompt": "more", "max_tokens": 4})
            assert second.status_code == 429
            assert "--max-queue 1" in second.json()["error"]["message"]
            assert second.json()["error"]["type"] == "rate_limit_error"
    finally:
        stalled.close()


def test_a_client_disconnect_aborts_the_request_and_frees_its_kv(served):
    engine = served.rt.engine
    aborted = engine.stats.aborted
    body = {"prompt": "long", "max_tokens": 1900, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        assert engine.kv.used_blocks > 0
    assert wait_until(lambda: engine.stats.aborted == aborted + 1)
    assert wait_until(lambda: engine.kv.free_blocks == engine.kv.num_blocks)
    assert engine.requests[-1].status is Status.ABORTED
    assert engine.requests[-1].generated < 1900

    with pytest.raises(httpx.ReadTimeout):  # a plain request whose client gives up
        httpx.post(served.url + "/v1/completions", json={**body, "stream": False}, timeout=0.5)
    assert wait_until(lambda: engine.stats.aborted == aborted + 2)
    assert wait_until(lambda: engine.kv.free_blocks == engine.kv.num_blocks)


def test_metrics_count_prefix_cache_queries_and_hits_under_vllms_names(served):
    def counter(name):
        text = httpx.get(served.url + "/metrics").text
        return int(next(line.split()[1] for line in text.splitlines() if line.startswith(name)))

    queries, hits = (
        counter("vllm:prefix_cache_queries_total"),
        counter("vllm:prefix_cache_hits_total"),
    )
    prompt = "A system prompt long enough to fill a few KV blocks of sixteen tokens. " * 2
    post(served, "/v1/completions", {"prompt": prompt + "First?", "max_tokens": 2})
    post(served, "/v1/completions", {"prompt": prompt + "Second?", "max_tokens": 2})
    assert counter("vllm:prefix_cache_queries_total") >= queries + 2 * len(prompt)
    # The second request finds the shared prompt's full blocks: at least 128 of its bytes.
    assert counter("vllm:prefix_cache_hits_total") - hits >= 128
