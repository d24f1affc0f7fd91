"""Text datasets as traces: ShareGPT conversations and vLLM's custom benchmark JSONL.

Both carry text, not lengths, and no arrival times (Poisson or gamma at ``--rate``, as for the
length-only traces). Lengths come from a tokenizer when one is given (a directory with a
``tokenizer.json``, read with the ``tokenizers`` package), else from a stated estimate of
``CHARS_PER_TOKEN`` characters per token, which every workload built so says in its notes.

- ``sharegpt``: the JSON list of ``{"conversations": [{"from": ..., "value": ...}, ...]}``
  that vLLM's and SGLang's serving benchmarks sample (ShareGPT_V3_unfiltered_cleaned_split
  .json). As they do, a request is a conversation's first turn and the reply to it;
  conversations with fewer than two turns are skipped and counted.
- ``vllm-custom``: vLLM's ``--dataset-name custom`` JSONL, one ``{"prompt": ...}`` per line
  with an optional ``output_tokens``; without it the output length is vLLM's default
  ``--custom-output-len`` (256).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from traces.arrivals import arrival_times
from traces.errors import TraceError
from traces.workload import Workload

CHARS_PER_TOKEN = 4.0  # the usual rule of thumb for English text with BPE tokenizers
CUSTOM_OUTPUT_TOKENS = 256

Counter = Callable[[list[str]], list[int]]


def token_counter(tokenizer: str | None) -> tuple[Counter, str]:
    """A function counting the tokens of each text, and how the lengths were found."""
    if tokenizer is None:
        return (
            lambda texts: [max(1, math.ceil(len(t) / CHARS_PER_TOKEN)) for t in texts],
            f"estimated at {CHARS_PER_TOKEN:g} characters per token (pass --trace-tokenizer "
            "DIR for exact counts)",
        )
    path = Path(tokenizer)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TraceError(f"--trace-tokenizer {tokenizer}: no tokenizer.json there")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TraceError(
            "--trace-tokenizer needs the tokenizers package (pip install tokenizers)"
        ) from None
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # the Rust side raises a generic Exception
        raise TraceError(f"{file}: not a readable tokenizer ({exc})") from None

    def count(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]

    return count, f"counted with {file}"


def sniff(path: Path) -> str | None:
    """``sharegpt`` or ``vllm-custom`` when the JSON file looks like one, else None."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096).lstrip()
    if head.startswith("[") and '"conversations"' in head:
        return "sharegpt"
    first = head.splitlines()[0] if head else ""
    try:
        row = json.loads(first)
    except ValueError:
        return None
    if isinstance(row, dict) and "prompt" in row and "timestamp" not in row:
        return "vllm-custom"
    return None


def read_sharegpt(
    path: Path, rate: float | None, cv: float, seed: int, tokenizer: str | None
) -> Workload:
    _need_rate(path, rate, "ShareGPT")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TraceError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise TraceError(f"{path}: a ShareGPT file is a JSON list of conversations")
    prompts, replies, short = [], [], 0
    for i, item in enumerate(data):
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            raise TraceError(f"{path}: conversation {i} has no 'conversations' list")
        if len(turns) < 2:
            short += 1
            continue
        texts = [_turn_text(path, i, j, t) for j, t in enumerate(turns[:2])]
        prompts.append(texts[0])
        replies.append(texts[1])
    notes = {"format": "sharegpt", "skipped_under_two_turns": short}
    return _workload(path, prompts, replies, None, rate, cv, seed, tokenizer, notes)


def read_vllm_custom(
    path: Path, rate: float | None, cv: float, seed: int, tokenizer: str | None
) -> Workload:
    _need_rate(path, rate, "vLLM custom")
    prompts: list[str] = []
    outputs: list[int | None] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise TraceError(f"{path}: line {line_no} is not valid JSON") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise TraceError(f"{path}: line {line_no} needs a string field 'prompt'")
            out = row.get("output_tokens")
            if out is not None and (
                isinstance(out, bool) or not isinstance(out, int) or out < 1
            ):
                raise TraceError(
                    f"{path}: line {line_no}: output_tokens must be a positive integer, "
                    f"got {out!r}"
                )
            prompts.append(row["prompt"])
            outputs.append(out)
    if not prompts:
        raise TraceError(f"{path}: the file has no requests")
    defaulted = sum(o is None for o in outputs)
    given = [CUSTOM_OUTPUT_TOKENS if o is None else o for o in outputs]
    notes = {"format": "vllm-custom", "output_tokens_defaulted": defaulted}
    if defaulted:
        notes["default_output_tokens"] = CUSTOM_OUTPUT_TOKENS
    return _workload(path, prompts, None, given, rate, cv, seed, tokenizer, notes)


def _workload(
    path: Path,
    prompts: list[str],
    replies: list[str] | None,
    outputs: list[int] | None,
    rate: float | None,
    cv: float,
    seed: int,
    tokenizer: str | None,
    notes: dict[str, Any],
) -> Workload:
    if not prompts:
        raise TraceError(f"{path}: no conversation has a prompt and a reply")
    count, how = token_counter(tokenizer)
    prompt = np.array(count(prompts), dtype=np.int64)
    output = np.array(count(replies) if replies is not None else outputs, dtype=np.int64)
    keep = (prompt > 0) & (output > 0)
    n = int(keep.sum())
    if n == 0:
        raise TraceError(f"{path}: every request has an empty prompt or reply")
    assert rate is not None
    return Workload(
        arrival_times(n, rate, cv, seed),
        prompt[keep],
        output[keep],
        name=path.stem,
        source=str(path),
        notes={
            **notes,
            "lengths": how,
            "dropped_empty": int((~keep).sum()),
            "arrivals": "poisson" if cv == 1 else "gamma",
            "rate": rate,
            "cv": cv,
            "seed": seed,
        },
    )


def _turn_text(path: Path, i: int, j: int, turn: Any) -> str:
    text = turn.get("value") if isinstance(turn, dict) else None
    if not isinstance(text, str):
        raise TraceError(f"{path}: conversation {i}, turn {j} has no string 'value'")
    return text


def _need_rate(path: Path, rate: float | None, kind: str) -> None:
    if rate is None:
        raise TraceError(
            f"{path}: a {kind} file has no arrival times, so it needs an arrival rate; pass "
            "--rate REQ_PER_S (Poisson)"
        )
