"""A checkpoint's chat template, rendered as transformers renders it.

The template comes from ``chat_template.jinja`` or the ``chat_template`` field of
``tokenizer_config.json`` (a string, or a list of named templates of which ``default`` is
used). It runs in jinja2's immutable sandbox with transformers' settings: ``trim_blocks``,
``lstrip_blocks``, loop controls, a ``tojson`` filter that keeps non-ASCII text,
``raise_exception`` and ``strftime_now``; the special tokens are passed by name
(``bos_token``, ``eos_token``, ...). The rendered text is tokenized without adding special
tokens, as ``apply_chat_template`` does, since the template writes them itself.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from twin.errors import TwinError

SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token")


class ChatTemplateError(ValueError):
    """The template refused the conversation (its ``raise_exception``) or failed to render."""


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str], origin: str) -> None:
        try:
            import jinja2
            from jinja2 import ext, nodes
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise TwinError(
                f"{origin} has a chat template, which needs jinja2 (pip install jinja2)"
            ) from None

        class GenerationTags(ext.Extension):
            # transformers marks assistant text with {% generation %}; rendering ignores it
            tags = {"generation"}

            def parse(self, parser):  # type: ignore[no-untyped-def]
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return nodes.Scope(body, lineno=lineno)

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(
                x,
                ensure_ascii=ensure_ascii,
                indent=indent,
                separators=separators,
                sort_keys=sort_keys,
            )

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTags, ext.loopcontrols]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._jinja = jinja2
        try:
            self._template = env.from_string(source)
        except jinja2.exceptions.TemplateError as exc:
            raise TwinError(f"{origin}: the chat template does not compile ({exc})") from None
        self.special_tokens = special_tokens
        self.origin = origin

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except self._jinja.exceptions.TemplateError as exc:
            why = f"the model's chat template refused the messages: {exc}"
            raise ChatTemplateError(why) from None
        except Exception as exc:  # a template bug reached with these messages
            why = f"the model's chat template failed on the messages: {exc}"
            raise ChatTemplateError(why) from None


def load_chat_template(directory: Path) -> ChatTemplate | None:
    """The directory's chat template, or None when it has none."""
    config = _read_json(directory / "tokenizer_config.json")
    source: Any = None
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        source, origin = jinja_file.read_text(encoding="utf-8"), str(jinja_file)
    else:
        source, origin = config.get("chat_template"), str(directory / "tokenizer_config.json")
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
    if source is None:
        return None
    if not isinstance(source, str):
        raise TwinError(f"{origin}: chat_template must be a string or a list of named templates")
    return ChatTemplate(source, special_tokens(config), origin)


def special_tokens(config: dict[str, Any]) -> dict[str, str]:
    found = {}
    for name in SPECIAL_NAMES:
        value = config.get(name)
        if isinstance(value, dict):  # an AddedToken written out
            value = value.get("content")
        if isinstance(value, str):
            found[name] = value
    return found


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
