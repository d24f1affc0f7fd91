"""Policy search: better than the defaults on a fixed seed, resumable from its storage."""

import json

import pytest

pytest.importorskip("optuna")

from twin.experiment import SimConfig  # noqa: E402
from twin.search import SPACES, pareto_front, pareto_plot, search  # noqa: E402


def base(policy="nexus"):
    # A load fixed on the roofline model, where the defaults leave the search room to win.
    return SimConfig(
        trace="azure-conv", policy=policy, rate_scale=5, max_requests=600, latency="datasheet"
    )


def test_search_beats_the_defaults_and_saves_a_runnable_config(tmp_path):
    result = search(base(), n_trials=8, workers=1, seed=0)
    assert result.best_goodput > result.default_goodput
    assert len(result.trials) == 8
    path = result.save_best(tmp_path / "best.json")
    saved = json.loads(path.read_text())
    assert saved["policy"] == "nexus" and set(SPACES["nexus"]) <= set(saved["params"])
    front = pareto_front(result.trials)
    assert front["goodput_rps"].is_monotonic_increasing
    assert pareto_plot(result, tmp_path / "p.png").stat().st_size > 0


def test_a_stored_study_resumes_where_it_stopped(tmp_path):
    storage = str(tmp_path / "study.log")
    first = search(base("duetserve"), n_trials=3, workers=1, seed=1, storage=storage)
    assert len(first.trials) == 3
    more = search(base("duetserve"), n_trials=5, workers=1, seed=1, storage=storage)
    assert len(more.trials) == 5
    assert set(first.trials["trial"]) <= set(more.trials["trial"])


def test_search_runs_trials_in_parallel_workers():
    result = search(base("static-split"), n_trials=4, workers=2, seed=0)
    assert len(result.trials) == 4 and result.best_goodput >= result.default_goodput
