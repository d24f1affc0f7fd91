import os
from pathlib import Path

import pytest
from hypothesis import settings

from tests.workloads import make_workload

# CI draws the same examples every run (a red CI names a bug, not a lucky draw); elsewhere the
# property tests explore new examples each time.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"


@pytest.fixture
def shared_traces() -> Path:
    if not SHARED_TRACES.is_dir():
        pytest.skip("the public traces folder is not beside the repository")
    return SHARED_TRACES


@pytest.fixture
def workload():
    return make_workload()


@pytest.fixture
def h100_model():
    from profiler import DatasheetModel, load_model_config

    return DatasheetModel(load_model_config("llama-3.1-8b"))
