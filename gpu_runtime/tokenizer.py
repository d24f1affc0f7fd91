"""Text <-> token ids: a byte-level tokenizer by default, or a local HF ``tokenizer.json``.

The byte tokenizer maps each UTF-8 byte to ``byte + 3`` after three specials (pad, bos, eos),
so any model with a vocabulary of at least 259 can serve text without a tokenizer file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from gpu_runtime.chat_template import load_chat_template
from twin.errors import TwinError


class Tokenizer(Protocol):
    eos_ids: frozenset[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt of a chat: the model's chat template with the generation prompt."""
        ...


class ByteTokenizer:
    PAD, BOS, EOS = 0, 1, 2
    OFFSET = 3

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 256 + self.OFFSET:
            raise TwinError(
                f"the model's vocabulary ({vocab_size}) is too small for the byte tokenizer "
                f"(it needs {256 + self.OFFSET}); pass --tokenizer DIR with a tokenizer.json"
            )
        self.eos_ids = frozenset({self.EOS})

    def encode(self, text: str) -> list[int]:
        return [self.BOS] + [b + self.OFFSET for b in text.encode("utf-8")]

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        # the bundled tokenizer_config.json's template renders this same transcript
        return self.encode(chat_prompt(messages))

    def decode(self, ids: list[int]) -> str:
        raw = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < 256 + self.OFFSET)
        return raw.decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizer.json`` read with the ``tokenizers`` package; EOS ids from its configs.

    EOS ids are the union of ``generation_config.json``'s and ``config.json``'s
    ``eos_token_id`` and ``tokenizer_config.json``'s ``eos_token``, read from the tokenizer's
    directory and the model's (``model_dir``); the chat template from the tokenizer's.
    """

    def __init__(self, directory: Path, model_dir: Path | None = None) -> None:
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError:
            raise TwinError(
                "--tokenizer needs the tokenizers package (pip install tokenizers)"
            ) from None
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise TwinError(f"--tokenizer {directory}: no tokenizer.json in that directory")
        try:
            self._tok = _Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a generic Exception
            raise TwinError(f"{path}: not a readable tokenizer ({exc})") from None
        dirs = [directory] if model_dir in (None, directory) else [directory, model_dir]
        self.eos_ids = frozenset(set().union(*(self._eos(d) for d in dirs)))
        self.chat_template = load_chat_template(directory)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if self.chat_template is None:
            return self.encode(chat_prompt(messages))
        text = self.chat_template.render(messages, add_generation_prompt=True)
        return self.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def _eos(self, directory: Path) -> set[int]:
        found: set[int] = set()
        for name in ("generation_config.json", "config.json"):
            eos = _read_json(directory / name).get("eos_token_id")
            if isinstance(eos, int):
                found.add(eos)
            elif isinstance(eos, list):
                found.update(i for i in eos if isinstance(i, int))
        token = _read_json(directory / "tokenizer_config.json").get("eos_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and self._tok.token_to_id(token) is not None:
            found.add(self._tok.token_to_id(token))
        return found


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_tokenizer(
    directory: str | None, vocab_size: int, model_dir: str | None = None
) -> Tokenizer:
    """--tokenizer's directory; else the model's directory when it has a tokenizer.json; else
    the byte-level tokenizer."""
    if directory is None:
        if model_dir is not None and (Path(model_dir) / "tokenizer.json").is_file():
            return HFTokenizer(Path(model_dir))
        return ByteTokenizer(vocab_size)
    path = Path(directory)
    if not path.is_dir():
        raise TwinError(f"--tokenizer {directory}: not a directory")
    model_path = Path(model_dir) if model_dir is not None and Path(model_dir).is_dir() else None
    return HFTokenizer(path, model_path)


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """A plain role-tagged transcript ending where the assistant speaks next.

    What models without a chat template (and the byte tokenizer) are served with.
    """
    parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


class IncrementalDecoder:
    """Text deltas for streaming: holds back output while it ends in a partial character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, ids: list[int], final: bool = False) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") and not final:
            return ""
        delta = text[len(self.text) :] if text.startswith(self.text) else text
        self.text = text
        return delta
