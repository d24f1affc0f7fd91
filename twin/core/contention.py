"""The fluid model of two lanes sharing HBM, for engines that keep time by prediction.

A running batch's remaining work proceeds at the rate its current co-runner allows; when the
co-runner changes (the other lane starts or finishes a batch) the remaining fraction is
re-rated, not frozen at launch. The simulator and the runtime's virtual clock both use this,
so their time lines agree to the bit.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from policies import BatchShape
from policies.view import LatencyModel

# Up to this many steps a run is re-predicted step by step in plain floats, where the model
# can; past it numpy's per-call cost is spread over enough steps to pay.
SCALAR_STEPS = 24


class FluidRun(Protocol):
    shape: BatchShape
    sms: int
    steps: int
    duration: float  # total seconds of the whole run under the current co-runner
    remaining: float  # fraction of the work left at ``last``
    last: float
    end: float


def rerate(
    run: FluidRun, now: float, model: LatencyModel, co_shape: BatchShape | None, co_sms: int
) -> None:
    """The co-runner of ``run`` changed at ``now``: finish its remaining work at the new rate."""
    run.remaining = max(0.0, run.remaining - (now - run.last) / run.duration)
    if run.steps > 1:
        shape = run.shape
        step_s = None
        if run.steps <= SCALAR_STEPS:
            step_s = getattr(model, "decode_step_s", lambda *_: None)(
                shape.n_decode, shape.decode_ctx_sum, run.sms, co_shape, co_sms
            )
        if step_s is not None:
            # The same elements as the vectorised run's, so the same (pairwise) sum.
            durations = np.array([step_s(j) for j in range(run.steps)])
        else:
            durations = model.predict_decode_run(
                shape.n_decode, shape.decode_ctx_sum, run.steps, run.sms, co_shape, co_sms
            )
        run.duration = float(durations.sum())
    else:
        run.duration = model.predict(run.shape, run.sms, co_shape, co_sms)
    run.last = now
    run.end = now + run.remaining * run.duration
