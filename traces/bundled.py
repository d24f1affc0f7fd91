"""Small real slices shipped inside the package, so named traces work with nothing else."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from traces.errors import TraceError

BUNDLED = {
    "azure-conv": "azure2023_conv_10min.csv",
    "azure-code": "azure2023_code_10min.csv",
    "mooncake": "mooncake_synthetic_first600.jsonl",
    "burstgpt": "burstgpt1_first400.csv",
    "sharegpt": "sharegpt_lengths_llama2_tokenizer.csv",
    "arxiv": "arxiv_summarization_lengths_llama2_tokenizer.csv",
}
# Full public files, found when a copy sits in a traces folder near the working directory.
FULL = {"azure-conv-full": "azure2023_conv.csv", "azure-code-full": "azure2023_code.csv"}


def bundled_names() -> list[str]:
    return [*BUNDLED, *FULL]


def bundled_path(name: str) -> Path:
    if name in BUNDLED:
        return Path(str(resources.files("traces").joinpath("data", BUNDLED[name])))
    if name in FULL:
        here = Path.cwd().resolve()
        for folder in (here, *here.parents):
            for sub in ("shared/traces", "traces"):
                candidate = folder / sub / FULL[name]
                if candidate.is_file():
                    return candidate
        raise TraceError(f"trace {name!r} needs the full public file {FULL[name]}; pass its path")
    raise TraceError(
        f"unknown trace {name!r}: not a file and not one of {', '.join(bundled_names())}"
    )
