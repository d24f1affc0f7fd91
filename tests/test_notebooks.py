"""The notebooks execute from top to bottom with small budgets."""

import os
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]


def execute(name: str, tmp_path: Path, env: dict[str, str]) -> None:
    nb = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_policy_search_notebook_runs(tmp_path):
    out = tmp_path / "out"
    execute(
        "policy_search",
        tmp_path,
        {
            "TWIN_NB_TRIALS": "4",
            "TWIN_NB_MAX_REQUESTS": "300",
            "TWIN_NB_WORKERS": "1",
            "TWIN_NB_OUT": str(out),
        },
    )
    assert (out / "best_nexus.json").is_file() and (out / "pareto_duetserve.png").is_file()


def test_validation_notebook_runs(tmp_path):
    execute("validation", tmp_path, {"TWIN_NB_ROOT": str(ROOT)})
