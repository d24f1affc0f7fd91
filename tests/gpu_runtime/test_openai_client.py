"""`twin run --model tiny` on a CPU against the official openai client: the drop-in check."""

import asyncio
import socket
import threading
import time

import pytest

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from gpu_runtime.build import build_runtime  # noqa: E402
from gpu_runtime.config import RuntimeConfig  # noqa: E402
from gpu_runtime.server import create_app  # noqa: E402
from gpu_runtime.serving import ServingEngine  # noqa: E402
from gpu_runtime.tokenizer import load_tokenizer  # noqa: E402

KEY = "sk-test"
VLLM_NAMES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:num_preemptions_total",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
)


@pytest.fixture(scope="module")
def server():
    settings = RuntimeConfig(device="cpu", num_kv_blocks=512, max_model_len=1024)
    rt = build_runtime("tiny", settings, "vllm")
    tok = load_tokenizer(None, rt.config.vocab_size)
    serving = ServingEngine(rt.engine, tok, "tiny", rt.config.vocab_size, max_queue=64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(serving, api_key=KEY), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def client(url, key=KEY):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_models_and_a_wrong_key(server):
    assert [m.id for m in client(server).models.list()] == ["tiny"]
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").models.list()
    assert httpx.get(server + "/health").status_code == 200  # probes need no key


def test_chat_streams_through_the_client(server):
    stream = client(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length" and reasons.count("length") == 1
    assert chunks[-1].usage.completion_tokens == 12
    prompt = len(b"<|user|>\nHello!\n<|assistant|>\n") + 1  # the bundled template + BOS
    assert chunks[-1].usage.prompt_tokens == prompt


def test_completion_and_a_stop_string(server):
    c = client(server)

    def complete(seed, stop=None):
        return c.completions.create(
            model="tiny",
            prompt="abc",
            max_tokens=40,
            seed=seed,
            stop=stop,
            extra_body={"ignore_eos": True},
        ).choices[0]

    # random weights: find a seeded sample whose text has a printable character past its start
    for seed in range(20):
        full = complete(seed)
        cuts = [ch for ch in full.text[1:] if ch.isascii() and ch.isprintable()]
        if cuts:
            break
    else:
        pytest.fail("no seeded sample of the tiny model decodes to printable text")
    assert full.finish_reason == "length"
    stopped = complete(seed, stop=[cuts[0], "never appears"])
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(cuts[0])]
    metrics = httpx.get(server + "/metrics").text
    stops = 'vllm:request_success_total{model_name="tiny",engine="0",finished_reason="stop"}'
    assert int(metrics.split(stops, 1)[1].split()[0]) >= 1  # counted as finished, not aborted


def test_32_concurrent_requests_and_vllm_metrics(server):
    async def main():
        c = openai.AsyncOpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)
        jobs = [
            c.completions.create(
                model="tiny", prompt=f"request {i}", max_tokens=8, extra_body={"ignore_eos": True}
            )
            for i in range(32)
        ]
        out = await asyncio.gather(*jobs)
        await c.close()
        return out

    results = asyncio.run(main())
    assert len({r.id for r in results}) == 32
    assert all(r.usage.completion_tokens == 8 for r in results)
    text = httpx.get(server + "/metrics").text
    for name in VLLM_NAMES:
        assert f"# TYPE {name} " in text, name
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("vllm:"))
    labels = '{model_name="tiny",engine="0"}'
    assert int(float(samples[f"vllm:generation_tokens_total{labels}"])) >= 32 * 8
    assert int(samples[f"vllm:e2e_request_latency_seconds_count{labels}"]) >= 32
    assert 'twin_partition_sms{model_name="tiny",engine="0",lane="mixed"}' in text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(families) == len(set(families)), "a metric family is declared twice"
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            assert name in families or base in families, f"{name} has no # TYPE line"
            float(line.rsplit(" ", 1)[1])  # every sample has a numeric value
