"""A batch predicted alone in plain floats equals the per-class dictionaries' sum, bit for bit.

``predict`` with no co-runner takes a path without ``op_times``' dictionaries; it must give
the very number the general form gives: the operator times summed in class order, plus the
overhead, plus the mixed-batch cost.
"""

import numpy as np
import pytest

from policies.batch import BatchShape
from profiler import DatasheetModel
from profiler.calibrate import CalibratedModel, Calibration
from profiler.fitted import FittedModel
from profiler.mixed import MixedBatchCost
from twin.latency import load_latency_model


def random_shapes(seed: int, count: int) -> list[BatchShape]:
    rng = np.random.default_rng(seed)
    shapes = [
        BatchShape.decode(1, 1),
        BatchShape.prefill(1),
        BatchShape.prefill(4096, 0, completes=False),
        BatchShape(prefill_q=(0,), prefill_ctx=(0,), n_decode=3, decode_ctx_sum=900, sampled=3),
        BatchShape(prefill_q=(0,), prefill_ctx=(0,)),
    ]
    for _ in range(count):
        chunks = int(rng.integers(0, 4))
        q = tuple(int(v) for v in rng.integers(1, 5000, chunks))
        ctx = tuple(int(v) if rng.random() < 0.5 else 0 for v in rng.integers(0, 30_000, chunks))
        n = int(rng.integers(0, 300)) if rng.random() < 0.8 or not chunks else 0
        ctx_sum = int(n * rng.integers(1, 8000)) if n else 0
        sampled = n + int(rng.integers(0, chunks + 1))
        shapes.append(BatchShape(q, ctx, n, ctx_sum, sampled))
    return shapes


def by_dictionaries(model, shape: BatchShape, sms: int) -> float:
    """``LatencyModel.predict``'s general form with no co-runner."""
    times = model.op_times(shape, sms, model.share(shape, sms, None, 0))
    return sum(times.values()) + model.overhead_s(shape) + model.mixed.extra_s(shape, times)


@pytest.fixture(params=["datasheet", "datasheet-mixed", "fitted", "calibrated"])
def model(request, llama, profile_dir):
    if request.param == "fitted":
        return FittedModel.from_profile(profile_dir, model_config=llama)
    base = DatasheetModel(llama)
    if request.param == "datasheet-mixed":
        base.mixed = MixedBatchCost(0.37, "test")
    if request.param == "calibrated":
        scales = {"gemm": 1.1, "attn_prefill": 0.9, "attn_decode": 1.3, "other": 0.0}
        return CalibratedModel(base, Calibration(scales, 2.1e-3, 10, "test"))
    return base


@pytest.mark.parametrize("sms", [132, 64, 8])
def test_a_batch_alone_in_plain_floats_equals_the_dictionaries_sum(model, sms):
    assert model._plain_alone
    for shape in random_shapes(sms, 400):
        fast = model.predict(shape, sms)
        assert fast == by_dictionaries(model, shape, sms), shape
        assert model.predict(shape, sms, BatchShape(), 0) == fast
        assert list(model._alone_times(shape, sms)) == list(model.op_times(shape, sms).values())


def test_a_model_that_reshapes_its_operator_times_keeps_the_general_form(llama):
    class Doubled(DatasheetModel):
        def op_times(self, shape, sms, share=1.0):
            return {op: 2.0 * t for op, t in super().op_times(shape, sms, share).items()}

    shape = BatchShape(prefill_q=(512,), prefill_ctx=(0,), n_decode=8, decode_ctx_sum=8000,
                       sampled=9)  # fmt: skip
    doubled, plain = Doubled(llama), DatasheetModel(llama)
    assert not doubled._plain_alone
    assert doubled.predict(shape, 132) == by_dictionaries(doubled, shape, 132)
    assert doubled.predict(shape, 132) > plain.predict(shape, 132)


def test_the_measured_model_off_its_full_gpu_is_the_general_form(llama):
    model = load_latency_model(llama)
    for shape in random_shapes(7, 100):
        assert model.predict(shape, 64) == by_dictionaries(model, shape, 64), shape
