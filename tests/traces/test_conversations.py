import json

import numpy as np
import pytest

import traces
from traces.conversations import CHARS_PER_TOKEN, CUSTOM_OUTPUT_TOKENS

SHAREGPT = [
    {
        "id": "a",
        "conversations": [
            {"from": "human", "value": "What is the capital of France?"},
            {"from": "gpt", "value": "Paris."},
            {"from": "human", "value": "And of Italy?"},
            {"from": "gpt", "value": "Rome."},
        ],
    },
    {"id": "b", "conversations": [{"from": "human", "value": "unanswered"}]},
    {
        "id": "c",
        "conversations": [
            {"from": "human", "value": "Write a haiku about GPUs " * 4},
            {"from": "gpt", "value": "Silicon rivers / " * 10},
        ],
    },
]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_sharegpt_takes_each_first_turn_and_its_reply_with_estimated_lengths(tmp_path):
    path = _write(tmp_path, "sg.json", json.dumps(SHAREGPT))
    wl = traces.load(str(path), rate=2.0, seed=1)
    assert len(wl) == 2 and wl.notes["format"] == "sharegpt"
    assert wl.notes["skipped_under_two_turns"] == 1
    assert "estimated at 4 characters per token" in wl.notes["lengths"]
    first, reply = SHAREGPT[0]["conversations"][0]["value"], "Paris."
    assert wl.prompt_tokens[0] == np.ceil(len(first) / CHARS_PER_TOKEN)
    assert wl.output_tokens[0] == np.ceil(len(reply) / CHARS_PER_TOKEN)
    assert wl.arrival_s[0] == 0 and wl.notes["arrivals"] == "poisson"


def test_sharegpt_lengths_from_a_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    from gpu_runtime.byte_tokenizer_files import byte_tokenizer_dir

    path = _write(tmp_path, "sg.json", json.dumps(SHAREGPT))
    wl = traces.load(str(path), rate=2.0, tokenizer=str(byte_tokenizer_dir()))
    first = SHAREGPT[0]["conversations"][0]["value"]
    assert wl.prompt_tokens[0] == len(first.encode())  # one token a byte, no BOS added
    assert wl.output_tokens[0] == len(b"Paris.")
    assert "counted with" in wl.notes["lengths"]


def test_vllm_custom_jsonl_with_and_without_output_lengths(tmp_path):
    lines = [{"prompt": "What is the capital of India?", "output_tokens": 7}, {"prompt": "Hi"}]
    path = _write(tmp_path, "custom.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    wl = traces.load(str(path), rate=1.0)
    assert wl.notes["format"] == "vllm-custom" and wl.notes["output_tokens_defaulted"] == 1
    assert wl.output_tokens.tolist() == [7, CUSTOM_OUTPUT_TOKENS]
    assert wl.prompt_tokens.tolist() == [8, 1]


@pytest.mark.parametrize(
    ("name", "text", "fmt", "message"),
    [
        ("sg.json", json.dumps(SHAREGPT), None, "needs an arrival rate; pass --rate"),
        ("sg.json", "[{\"conversations\": 5}]", "sharegpt", "conversation 0 has no"),
        ("sg.json", json.dumps([{"conversations": [{"from": "human"}, {}]}]), "sharegpt",
         "turn 0 has no string 'value'"),
        ("c.jsonl", '{"prompt": "x", "output_tokens": 0}\n', None, "line 1: output_tokens"),
        ("c.jsonl", '{"prompt": "x"}\nnot json\n', None, "line 2 is not valid JSON"),
        ("c.jsonl", '{"prompt": 3}\n', "vllm-custom", "line 1 needs a string field 'prompt'"),
    ],
)  # fmt: skip
def test_bad_text_traces_are_one_line_errors(tmp_path, name, text, fmt, message):
    path = _write(tmp_path, name, text)
    rate = None if "arrival rate" in message else 1.0
    with pytest.raises(traces.TraceError, match=message):
        traces.load(str(path), format=fmt, rate=rate)


def test_a_missing_tokenizer_is_named(tmp_path):
    path = _write(tmp_path, "sg.json", json.dumps(SHAREGPT))
    with pytest.raises(traces.TraceError, match="--trace-tokenizer .*no tokenizer.json"):
        traces.load(str(path), rate=1.0, tokenizer=str(tmp_path))


def test_mooncake_jsonl_is_still_detected():
    wl = traces.load("mooncake")
    assert wl.notes["format"] == "mooncake"


def test_simulate_takes_a_sharegpt_file_and_states_the_estimate(tmp_path):
    from typer.testing import CliRunner

    from twin.commands.cli import app

    path = _write(tmp_path, "sg.json", json.dumps(SHAREGPT))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["simulate", "--trace", str(path), "--rate", "1", "--out", str(out), "--no-plots"]
    )
    assert result.exit_code == 0, result.output
    assert "length-only trace were replayed" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["workload"]["lengths"].startswith("estimated at 4 characters")
