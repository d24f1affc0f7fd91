"""Generated HTTP bodies against the server: whatever a client sends, the answer is never a
500 and the engine keeps serving."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.gpu_runtime.test_server import Served  # noqa: E402

CLIENT_ERRORS = {400, 404, 429}
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | surrogates
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
# Small or absurd: a generated request that happens to be valid stays quick to serve.
max_tokens = st.integers(-2, 4) | st.integers(2**31, 2**70) | json_values
FIELDS = {
    "model": st.just("tiny") | json_values,
    "temperature": json_values,
    "top_p": json_values,
    "seed": st.integers(-(2**65), 2**65) | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": json_values,
    "n": json_values,
    "stop": json_values,
    "logit_bias": json_values,
    "response_format": json_values,
    "ignore_eos": json_values,
    "logprobs": json_values,
    "echo": json_values,
    "presence_penalty": json_values,
}
message = st.fixed_dictionaries(
    {}, optional={"role": st.just("user") | json_values, "content": st.text() | json_values}
)
COMPLETION_FIELDS = {
    "prompt": st.text(max_size=12) | surrogates | json_values,
    "max_tokens": max_tokens,
    **FIELDS,
}
CHAT_FIELDS = {
    "messages": st.lists(message, max_size=2) | json_values,
    "max_tokens": max_tokens,
    "max_completion_tokens": max_tokens,
    **FIELDS,
}


def hostile(valid: dict, fields: dict) -> st.SearchStrategy:
    """A valid request with one to three of its fields replaced by generated values, so each
    hostile value gets past the others and reaches its own check."""
    keys = st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True)
    changes = keys.flatmap(lambda ks: st.fixed_dictionaries({k: fields[k] for k in ks}))
    return changes.map(lambda change: {**valid, **change})


completions = hostile({"prompt": "hi", "max_tokens": 2}, COMPLETION_FIELDS)
chats = hostile({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, CHAT_FIELDS)


@pytest.fixture(scope="module")
def served():
    s = Served(max_queue=8)
    yield s
    s.close()


def answer(served, path: str, content: bytes) -> httpx.Response:
    return httpx.post(
        served.url + path,
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )


def check(served, r: httpx.Response) -> None:
    assert r.status_code == 200 or r.status_code in CLIENT_ERRORS, (r.status_code, r.text)
    if r.status_code != 200:
        assert r.json()["error"]["message"]


@SETTINGS
@given(body=completions)
def test_no_completions_body_gets_a_500(served, body):
    check(served, answer(served, "/v1/completions", json.dumps(body).encode()))


@SETTINGS
@given(body=chats)
def test_no_chat_body_gets_a_500(served, body):
    check(served, answer(served, "/v1/chat/completions", json.dumps(body).encode()))


@settings(max_examples=25, deadline=None)
@given(raw=st.binary(max_size=64) | st.integers(1, 200_000).map(lambda n: b"[" * n))
def test_no_raw_body_gets_a_500(served, raw):
    r = answer(served, "/v1/completions", raw)
    assert r.status_code in CLIENT_ERRORS, (r.status_code, r.text)


def test_the_engine_is_still_healthy_and_serving_after_all_of_them(served):
    assert httpx.get(served.url + "/health", timeout=10).status_code == 200
    ok = httpx.post(
        served.url + "/v1/completions", json={"prompt": "fine", "max_tokens": 2}, timeout=30
    )
    assert ok.status_code == 200
