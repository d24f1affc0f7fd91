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
    def __init__(
        self,
        max_queue: int = 64,
        blocks: int = 256,
        manage_engine: bool = True,
        policy_args: dict | None = None,
    ):
        settings = RuntimeConfig(device="cpu", num_kv_blocks=blocks, max_model_len=MAX_LEN)
        self.rt = build_runtime(tiny_llama(vocab=512), settings, "vllm", policy_args)
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
        ({"prompt": "x", "stop": 5}, 400, "stop must be a string or a list of strings"),
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


def test_a_full_queue_answers_429_with_retry_after():
    one_at_a_time = Served(max_queue=1, policy_args={"max_num_seqs": 1})
    try:
        body = {"prompt": "wait", "max_tokens": 1500, "stream": True, "ignore_eos": True}
        with httpx.stream(
            "POST", one_at_a_time.url + "/v1/completions", json=body, timeout=30
        ) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: a dropped iterator closes the stream
            next(lines)  # running: it holds the only sequence slot
            with httpx.stream(
                "POST", one_at_a_time.url + "/v1/completions", json=body, timeout=30
            ) as queued:
                assert queued.status_code == 200  # admitted: waits in the queue of one
                third = post(one_at_a_time, "/v1/completions", {"prompt": "x", "max_tokens": 4})
                assert third.status_code == 429
                assert third.headers["Retry-After"] == "1"
                assert third.json()["error"]["type"] == "rate_limit_error"
    finally:
        one_at_a_time.close()


def test_a_burst_into_an_idle_engine_is_served_beyond_max_queue():
    small_queue = Served(max_queue=1)
    try:
        results = [None] * 6

        def send(i):
            body = {"prompt": f"burst {i}", "max_tokens": 3}
            results[i] = post(small_queue, "/v1/completions", body).status_code

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [200] * len(results)  # the engine runs them all at once
    finally:
        small_queue.close()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "seed": 2**64}, "seed"),
        ({"prompt": "x", "seed": -(2**63) - 1}, "seed"),
        ({"prompt": "x", "logit_bias": {"1": 5}}, "logit_bias"),
        ({"prompt": "x", "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_unsupported_or_out_of_range_fields_are_refused_and_the_engine_keeps_serving(
    served, body, param
):
    r = post(served, "/v1/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    ok = post(served, "/v1/completions", {"prompt": "after", "max_tokens": 2})
    assert ok.status_code == 200
    assert httpx.get(served.url + "/health", timeout=10).status_code == 200


def test_a_lone_surrogate_and_deep_nesting_get_400(served):
    lone = b'{"prompt": "a\\ud800b", "max_tokens": 2}'
    r = httpx.post(served.url + "/v1/completions", content=lone, timeout=30)
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]
    chat = b'{"messages": [{"role": "user", "content": "\\udfff"}]}'
    r = httpx.post(served.url + "/v1/chat/completions", content=chat, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
    deep = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(served.url + "/v1/completions", content=deep, timeout=30)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]


def test_a_failing_listener_fails_its_request_alone(served, caplog):
    class Broken:
        def started(self, job):
            pass

        def tokens(self, job, ids):
            raise RuntimeError("listener broke")

        def finished(self, job):
            self.reason = job.finish_reason

    broken = Broken()
    from gpu_runtime.sampling import SamplingParams

    with caplog.at_level("ERROR", logger="twin.serving"):
        served.serving.submit([1, 2, 3], 4, SamplingParams(), broken)
        assert wait_until(lambda: getattr(broken, "reason", None) is not None)
    assert broken.reason == "error"
    assert any("its tokens event failed" in rec.getMessage() for rec in caplog.records)
    ok = post(served, "/v1/completions", {"prompt": "still here", "max_tokens": 2})
    assert ok.status_code == 200


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


def test_a_batch_that_fails_to_launch_fails_its_request_alone(caplog):
    s = Served()
    executor = s.rt.engine.executor
    launch = executor.launch

    def failing(lane, partition, batch, cache, job_of):
        if any(c.request.prompt_tokens == 13 for c in batch.prefill):
            raise RuntimeError("injected launch failure")
        return launch(lane, partition, batch, cache, job_of)

    executor.launch = failing
    try:
        with caplog.at_level("ERROR", logger="twin.engine"):
            bad = post(s, "/v1/completions", {"prompt": [5] * 13, "max_tokens": 3})
        assert bad.status_code == 500  # the server's own failure, reported as one
        assert "failing its requests" in caplog.text and "injected" in caplog.text
        ok = post(s, "/v1/completions", {"prompt": "fine", "max_tokens": 3})
        assert ok.status_code == 200
        assert httpx.get(s.url + "/health", timeout=10).json() == {"status": "ok"}
        assert s.rt.engine.kv.free_blocks == s.rt.engine.kv.num_blocks
    finally:
        s.close()


def test_an_engine_that_cannot_go_on_says_so_on_health():
    s = Served()
    engine = s.rt.engine

    def broken_policy(view, lane):
        raise RuntimeError("policy bug")

    engine.policy.next_batch = broken_policy
    try:
        r = post(s, "/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert r.status_code == 500
        assert wait_until(lambda: httpx.get(s.url + "/health", timeout=10).status_code == 503)
        assert "policy bug" in httpx.get(s.url + "/health", timeout=10).json()["error"]
        assert post(s, "/v1/completions", {"prompt": "y", "max_tokens": 2}).status_code == 503
    finally:
        s.close()


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
