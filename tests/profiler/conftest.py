import shutil
from pathlib import Path

import pytest

from profiler import load_model_config
from profiler.fit import fit_profile
from profiler.profile_io import read_meta, read_samples, write_fit
from profiler.synthetic import h100_truth, write_synthetic_profile

DATE = "2025-01-01"


@pytest.fixture(scope="session")
def llama():
    return load_model_config("llama-3.1-8b")


@pytest.fixture(scope="session")
def truth():
    return h100_truth()


@pytest.fixture(scope="session")
def profile_dir(tmp_path_factory) -> Path:
    """A synthetic H100-like profile (quick grid, 2.5% noise) with its fit; do not modify."""
    directory = write_synthetic_profile(tmp_path_factory.mktemp("profile") / "p", date=DATE)
    write_fit(directory, fit_profile(read_samples(directory), read_meta(directory)))
    return directory


@pytest.fixture
def profile_copy(profile_dir, tmp_path) -> Path:
    """A private copy of the synthetic profile that a test may damage."""
    return Path(shutil.copytree(profile_dir, tmp_path / "copy"))
