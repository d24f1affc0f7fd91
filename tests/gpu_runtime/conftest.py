"""Fixtures for runtime tests."""

import importlib.util

import pytest

from tests.gpu_runtime.tiny import tiny_llama, tiny_qwen3


@pytest.fixture(scope="package", autouse=True)
def one_cpu_thread():
    """Tiny tensors gain nothing from intra-op threads, and spinning OpenMP workers slow down
    by an order of magnitude when other processes share the cores."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def llama_cfg():
    return tiny_llama()


@pytest.fixture
def qwen_cfg():
    return tiny_qwen3()
