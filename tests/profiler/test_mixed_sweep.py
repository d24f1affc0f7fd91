"""Mixed-batch samples: the kernel that runs a chunk and decodes in one pass, and the rows."""

import numpy as np
import pandas as pd
import pytest

from profiler.config import ModelConfig
from profiler.grid import SampleCosts
from profiler.mixed_sweep import MIXED, mixed_row, mixed_shape, mixed_summary, with_mixed_columns
from profiler.profile_io import MIXED_COLUMNS, ProfileError, check_samples

torch = pytest.importorskip("torch")

from profiler.host import HostClock  # noqa: E402
from profiler.kernels import Kernels  # noqa: E402
from profiler.mixed_sweep import measure_mixed  # noqa: E402

TINY = ModelConfig(
    name="tiny",
    hidden_size=64,
    intermediate_size=128,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    vocab_size=256,
)


@pytest.fixture(scope="module")
def kernels():
    torch.manual_seed(0)
    k = Kernels(TINY, torch.device("cpu"), layers=2)
    k.flash = None
    return k


@pytest.mark.parametrize("prefix, n_decode", [(0, 3), (8, 1), (4, 0)])
def test_a_mixed_iteration_samples_the_chunk_and_every_decode(kernels, prefix, n_decode):
    layers, head = kernels.mixed_iteration(12, prefix, n_decode, 20)
    layers()
    logits = head()
    assert logits.shape == (n_decode + 1, TINY.vocab_size)
    assert torch.isfinite(logits.float()).all()


def test_a_mixed_row_costs_more_than_either_part_and_keeps_the_three_times():
    row = mixed_row(TINY, 8, (16, 8, 4, 32), [3.0, 2.0, 4.0], [1.0, 1.5], [0.5, 0.7, 0.6])
    assert row["op_class"] == MIXED and row["median_s"] == row["seconds_mixed"] == 3.0
    assert row["seconds_prefill_alone"] == 1.25 and row["seconds_decode_alone"] == 0.6
    costs = SampleCosts(TINY)
    shape = mixed_shape((16, 8, 4, 32))
    assert shape.n_decode == 4 and shape.decode_ctx_sum == 128 and shape.sampled == 5
    from policies.batch import BatchShape

    alone = costs.iteration(BatchShape.prefill(16, 8)).flops
    assert row["flops"] > alone


def test_measured_rows_pass_the_samples_schema(kernels):
    row = measure_mixed(TINY, kernels, HostClock(repeats=2), None, 8, (8, 0, 2, 16))
    plain = {c: 0 for c in ("tokens", "batch", "context", "chunk", "prefix", "co_sms")}
    plain.update(op_class="gemm", op_name="qkv", sms=8, co_kind="", median_s=1e-3)
    plain.update(p10_s=1e-3, p90_s=1e-3, repeats=3, flops=1.0, bytes=1.0)
    df = with_mixed_columns(pd.DataFrame([plain, row]))
    checked = check_samples(df, "samples.parquet")
    assert list(checked.columns)[-len(MIXED_COLUMNS) :] == list(MIXED_COLUMNS)
    assert (checked.loc[0, list(MIXED_COLUMNS)] == 0).all()
    assert checked.loc[1, "seconds_mixed"] > 0
    summary = mixed_summary(checked)
    assert summary["n"] == 1
    parts = row["seconds_prefill_alone"] + row["seconds_decode_alone"]
    assert np.isclose(summary["mixed_over_sum_of_parts"]["median"], row["seconds_mixed"] / parts)


def test_a_mixed_time_that_is_not_finite_is_refused(kernels):
    row = mixed_row(TINY, 8, (8, 0, 2, 16), [1.0], [1.0], [1.0])
    row["seconds_decode_alone"] = float("nan")
    with pytest.raises(ProfileError, match="seconds_decode_alone"):
        check_samples(pd.DataFrame([row]), "samples.parquet")
    with pytest.raises(ValueError, match="seconds_decode_alone"):
        with_mixed_columns(pd.DataFrame([row]))
