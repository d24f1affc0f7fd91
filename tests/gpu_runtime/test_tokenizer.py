"""Tokenizers: the byte-level default, a local tokenizer.json, and streaming text deltas."""

import json

import pytest

from gpu_runtime.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    IncrementalDecoder,
    chat_prompt,
    load_tokenizer,
)
from twin.errors import TwinError


def test_byte_tokenizer_round_trips_text_and_skips_specials():
    tok = ByteTokenizer(512)
    ids = tok.encode("héllo, 世界")
    assert ids[0] == ByteTokenizer.BOS and max(ids) < 259
    assert tok.decode(ids + [ByteTokenizer.EOS, 400]) == "héllo, 世界"
    with pytest.raises(TwinError, match="too small for the byte tokenizer"):
        ByteTokenizer(256)


def test_streaming_deltas_never_split_a_character():
    tok = ByteTokenizer(512)
    decoder = IncrementalDecoder(tok)
    deltas = [decoder.push([i]) for i in tok.encode("a世b")[1:]]
    assert deltas == ["a", "", "", "世", "b"]
    assert decoder.push([], final=True) == ""


def test_a_local_tokenizer_json_with_eos_from_its_configs(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}
    model = tokenizers.models.WordLevel(vocab, unk_token="<unk>")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.add_special_tokens(["</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 1}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    loaded = load_tokenizer(str(tmp_path), 4)
    assert isinstance(loaded, HFTokenizer)
    assert loaded.encode("hello world") == [2, 3]
    assert loaded.eos_ids == frozenset({1})
    assert loaded.decode([2, 1, 3]) == "hello world"
    with pytest.raises(TwinError, match="missing: not a directory"):
        load_tokenizer(str(tmp_path / "missing"), 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TwinError, match="no tokenizer.json in that directory"):
        load_tokenizer(str(tmp_path / "empty"), 4)


def test_chat_messages_become_a_role_tagged_prompt():
    text = chat_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert text == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
