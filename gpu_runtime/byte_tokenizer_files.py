"""The byte-level tokenizer as Hugging Face files, for tools that count tokens offline.

``tokenizer.json`` encodes exactly as ``ByteTokenizer``: ``<s>`` first, then each UTF-8 byte
as ``byte + 3``. Load tools such as guidellm with ``--processor`` pointing at
``BYTE_TOKENIZER_DIR`` (``twin run`` prints it). ``write_files`` regenerates the bundled copy;
a test checks that the two agree.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

SPECIALS = ("<pad>", "<s>", "</s>")
OFFSET = len(SPECIALS)

# The same role-tagged transcript as ``chat_prompt``, as a chat template.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def byte_tokenizer_dir() -> Path:
    return Path(str(resources.files("gpu_runtime").joinpath("data", "byte-tokenizer")))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the alphabet of the ByteLevel pre-tokenizer."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def tokenizer_json() -> dict[str, Any]:
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: b + OFFSET for b, ch in _bytes_to_unicode().items()})
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIALS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def tokenizer_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "add_bos_token": True,
        "model_max_length": 8192,
        "chat_template": CHAT_TEMPLATE,
    }


def generation_config() -> dict[str, Any]:
    return {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def files() -> dict[str, str]:
    return {
        "tokenizer.json": json.dumps(tokenizer_json(), ensure_ascii=False, indent=1) + "\n",
        "tokenizer_config.json": json.dumps(tokenizer_config(), indent=1) + "\n",
        "generation_config.json": json.dumps(generation_config(), indent=1) + "\n",
    }


def write_files(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files().items():
        (directory / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_files(Path(__file__).parent / "data" / "byte-tokenizer")
