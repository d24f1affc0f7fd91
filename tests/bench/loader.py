"""Loading a bench script as a module, and a tiny Azure-format trace, for the bench tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as the module ``name`` (registered, as dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def azure_trace(tmp_path: Path) -> Path:
    """Eight requests a second apart in the Azure trace's CSV layout."""
    path = tmp_path / "azure.csv"
    rows = [f"2023-11-16 18:15:{10 + i:02d}.5000000,{300 + 40 * i},{20 + 7 * i}" for i in range(8)]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return path
