"""The package layout the design fixes: one scheduling core, two executors that never import
each other, and shared run outputs."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("twin.core", "twin.outputs", "twin.errors", "twin.latency")


def imports(package: str) -> dict[str, set[str]]:
    """Every module each file of ``package`` imports (at any depth, lazily or not)."""
    found = {}
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def offending(package: str, allowed) -> list[str]:
    return [
        f"{file} imports {name}"
        for file, names in imports(package).items()
        for name in sorted(names)
        if not allowed(name)
    ]


def test_the_runtime_imports_from_twin_only_the_core_and_the_shared_outputs():
    def allowed(name):
        return not name.startswith("twin") or name.startswith(SHARED)

    assert offending("gpu_runtime", allowed) == []


def test_the_simulator_the_core_and_the_outputs_never_import_the_runtime():
    for package in ("twin.sim", "twin.core", "twin.outputs"):
        assert offending(package, lambda name: not name.startswith("gpu_runtime")) == []


def test_only_the_commands_start_the_runtime():
    twin = imports("twin")
    users = {f for f, names in twin.items() if any(n.startswith("gpu_runtime") for n in names)}
    assert users and all(f.startswith("twin/commands/") for f in users), users


def test_the_core_runs_without_simpy_or_torch():
    code = (
        "import sys; sys.modules['simpy'] = None; sys.modules['torch'] = None; "
        "import twin.core, twin.core.contention, twin.outputs.writer"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
