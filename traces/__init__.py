"""Public LLM inference traces and synthetic workloads, as one ``Workload`` table."""

from __future__ import annotations

from pathlib import Path

from traces.bundled import BUNDLED, FULL, bundled_names, bundled_path
from traces.errors import TraceError
from traces.loaders import FORMATS
from traces.loaders import read as _read
from traces.synthetic import from_spec, synthetic
from traces.workload import Workload

__all__ = [
    "FORMATS",
    "TraceError",
    "Workload",
    "bundled_names",
    "bundled_path",
    "load",
    "synthetic",
]


def load(
    spec: str,
    *,
    format: str | None = None,
    rate: float | None = None,
    cv: float = 1.0,
    seed: int = 0,
    tokenizer: str | None = None,
) -> Workload:
    """A bundled trace name, a ``synthetic:...`` spec, or a path to a trace file.

    ``tokenizer``: a directory with a tokenizer.json that counts the tokens of text datasets
    (ShareGPT, vLLM custom JSONL); without it their lengths are a stated estimate."""
    if spec.startswith("synthetic:") or spec == "synthetic":
        return from_spec(spec if ":" in spec else "synthetic:", rate, cv, seed)
    path = Path(spec)
    if spec in BUNDLED or spec in FULL:
        path = bundled_path(spec)
    elif not path.exists():
        bundled_path(spec)  # raises the unknown-name error listing the bundled names
    wl = _read(path, format, rate, cv, seed, tokenizer)
    if spec in BUNDLED or spec in FULL:
        return Workload(
            wl.arrival_s,
            wl.prompt_tokens,
            wl.output_tokens,
            wl.prefix_hashes,
            name=spec,
            source=f"{spec} (bundled slice of {path.name}; see traces/data/ATTRIBUTION.md)",
            notes=wl.notes,
        )
    return wl
