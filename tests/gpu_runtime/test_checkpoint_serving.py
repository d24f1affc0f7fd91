"""Serving a checkpoint as its authors meant: chat templates, EOS, stops, supported types."""

import json
import warnings

import pytest

from gpu_runtime.byte_tokenizer_files import byte_tokenizer_dir, files
from gpu_runtime.chat_template import ChatTemplate, ChatTemplateError, load_chat_template
from gpu_runtime.stops import StopError, StopMatcher, parse_stop
from gpu_runtime.support import check_max_model_len, check_servable, cpu_threads
from profiler.config import ModelConfig, load_model_config
from twin.errors import TwinError

# A Qwen-style ChatML template with the constructs real templates use.
CHATML = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('the system message must come first') }}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Grüße"},
    {"role": "assistant", "content": "Hallo"},
    {"role": "user", "content": "Wie geht's?"},
]


def _checkpoint(tmp_path, template=CHATML, eos=None):
    d = tmp_path / "ckpt"
    d.mkdir()
    for name, text in files().items():
        (d / name).write_text(text)
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    if eos is not None:
        (d / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return d


def test_the_template_renders_as_transformers_renders_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    d = _checkpoint(tmp_path)
    ours = load_chat_template(d).render(MESSAGES, add_generation_prompt=True)
    theirs = transformers.AutoTokenizer.from_pretrained(str(d)).apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True
    )
    assert ours == theirs and ours.endswith("<|im_start|>assistant\n")
    assert (
        not load_chat_template(d)
        .render(MESSAGES, add_generation_prompt=False)
        .endswith("assistant\n")
    )


def test_a_template_that_refuses_the_messages_is_a_clear_error(tmp_path):
    template = load_chat_template(_checkpoint(tmp_path))
    with pytest.raises(ChatTemplateError, match="the system message must come first"):
        template.render([MESSAGES[1], MESSAGES[0]])
    with pytest.raises(TwinError, match="does not compile"):
        ChatTemplate("{% for %}", {}, "tokenizer_config.json")


def test_named_templates_and_the_jinja_file(tmp_path):
    d = _checkpoint(
        tmp_path,
        template=[{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
    )
    assert load_chat_template(d).render(MESSAGES) == "D"
    (d / "chat_template.jinja").write_text("{{ bos_token }}J")
    assert load_chat_template(d).render(MESSAGES) == "<s>J"


def test_the_chat_prompt_and_eos_come_from_the_checkpoint(tmp_path):
    pytest.importorskip("tokenizers")
    from gpu_runtime.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

    d = _checkpoint(tmp_path, eos=[2, 7])
    tok = load_tokenizer(None, 512, str(d))  # the model's directory holds a tokenizer.json
    assert isinstance(tok, HFTokenizer) and tok.eos_ids == {2, 7}
    ids = tok.chat_ids(MESSAGES)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert ids.count(1) == 0  # the template writes no BOS and none is added
    bundled = HFTokenizer(byte_tokenizer_dir())
    assert bundled.chat_ids(MESSAGES) == ByteTokenizer(512).chat_ids(MESSAGES)


def test_the_bundled_tokenizer_files_are_current_and_encode_as_the_byte_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from gpu_runtime.tokenizer import ByteTokenizer

    for name, text in files().items():
        assert (byte_tokenizer_dir() / name).read_text() == text, name
    hf = tokenizers.Tokenizer.from_file(str(byte_tokenizer_dir() / "tokenizer.json"))
    byte = ByteTokenizer(512)
    for text in ("plain", "héllo wörld 🙂", " two  spaces\n\ttab", ""):
        assert hf.encode(text).ids == byte.encode(text)
        assert hf.decode(byte.encode(text)) == text


@pytest.mark.parametrize(
    ("deltas", "stops", "sent", "text"),
    [
        (["Hel", "lo, wo", "rld"], ("o, w",), ["Hel", "l", ""], "Hell"),
        (["ab", "c", "d"], ("cd",), ["ab", "", ""], "abc"[:2]),
        (["ab", "c", "x"], ("cd",), ["ab", "", "cx"], "abcx"),
        (["end"], ("e", "nd"), [""], ""),
    ],
)
def test_stop_strings_cut_the_text_and_hold_back_partial_matches(deltas, stops, sent, text):
    m = StopMatcher(stops)
    assert [m.push(d) for d in deltas] == sent
    m.push("", final=True)
    assert m.text == text


def test_stop_field_validation():
    assert parse_stop("x") == ("x",) and parse_stop(None) == () and parse_stop(["a", ""]) == ("a",)
    for bad in (5, ["a", 3], ["a", "b", "c", "d", "e"]):
        with pytest.raises(StopError):
            parse_stop(bad)


def test_unimplemented_model_types_are_refused_and_long_lengths_warned(tmp_path):
    gemma = {
        "model_type": "gemma2",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 512,
        "max_position_embeddings": 256,
    }
    (tmp_path / "config.json").write_text(json.dumps(gemma))
    with pytest.raises(TwinError, match="model type 'gemma2'.*not implemented by twin run"):
        check_servable(load_model_config(tmp_path))
    check_servable(load_model_config("tiny"))
    with pytest.warns(UserWarning, match="exceeds .*max_position_embeddings \\(8192\\)"):
        check_max_model_len(load_model_config("tiny"), 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_max_model_len(load_model_config("tiny"), 8192)


def test_cpu_thread_defaults(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    tiny = load_model_config("tiny")
    assert cpu_threads(tiny, None) == 1
    assert cpu_threads(tiny, 3) == 3
    big = ModelConfig("big", 4096, 14336, 32, 32, 8, 128, 128256)
    assert cpu_threads(big, None) >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads(tiny, None) == 2
    with pytest.raises(TwinError, match="--cpu-threads"):
        cpu_threads(tiny, 0)
