"""A simulation checked at its edges: flags and engine settings in, request times out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from policies.numbers import check_fields, check_number
from twin.errors import TwinError

if TYPE_CHECKING:
    from twin.experiment import SimConfig

# Beyond these the float64 clock cannot resolve an iteration: arrivals spread over more than
# MAX_SPAN_S seconds, or packed closer than a nanosecond, read back as TTFT = TBT = 0.
MAX_RATE = 1e6
MAX_RATE_SCALE = 1e6
MAX_SPAN_S = 1e8
MAX_CV = 100.0
MAX_CLOCK_S = 1e9  # beyond this a 10 us iteration is below float64's resolution of the clock


def check_sim_config(cfg: SimConfig) -> None:
    """One-line errors naming the flag for every number a simulation is configured with."""
    if cfg.rate is not None:
        check_number(cfg.rate, "--rate", low=0.0, low_open=True, high=MAX_RATE, error=TwinError)
    check_number(cfg.cv, "--cv", low=0.0, low_open=True, high=MAX_CV, error=TwinError)
    check_number(
        cfg.rate_scale,
        "--rate-scale",
        low=1 / MAX_RATE_SCALE,
        high=MAX_RATE_SCALE,
        error=TwinError,
    )
    check_number(cfg.start_s, "--start", low=0.0, high=MAX_SPAN_S, error=TwinError)
    if cfg.duration_s is not None:
        check_number(
            cfg.duration_s,
            "--duration",
            low=0.0,
            low_open=True,
            high=MAX_SPAN_S,
            error=TwinError,
        )
    if cfg.max_requests is not None:
        check_number(cfg.max_requests, "--max-requests", integer=True, low=1, error=TwinError)
    check_number(cfg.seed, "--seed", integer=True, low=0, high=2**63 - 1, error=TwinError)


def check_span(span_s: float, trace: str) -> None:
    """The workload, as scaled, must fit the clock's resolution."""
    if span_s > MAX_SPAN_S:
        raise TwinError(
            f"trace {trace!r} spans {span_s:.3g} s after --rate/--rate-scale; the simulator "
            f"resolves iterations only up to {MAX_SPAN_S:g} s: raise the rate"
        )


def check_engine_config(cfg) -> None:
    """The simulated engine's settings: finite, whole where counted, and in range."""
    check_fields(cfg, TwinError, lambda name: f"engine setting {name}")
    check_number(
        cfg.gpu_memory_utilization,
        "gpu_memory_utilization",
        low=0.0,
        low_open=True,
        high=1.0,
        error=TwinError,
    )
    for name in ("activation_reserve_bytes",):
        check_number(getattr(cfg, name), name, low=0, error=TwinError)
    for name in ("block_size", "max_steps_per_event"):
        check_number(getattr(cfg, name), name, low=1, error=TwinError)
    if cfg.num_kv_blocks is not None:
        check_number(cfg.num_kv_blocks, "KV blocks", low=1, error=TwinError)


def check_results(records, end_s: float) -> None:
    """The last guard against a silently wrong run: times finite, ordered and resolvable."""
    import numpy as np

    from twin.errors import SimulationError

    if not np.isfinite(end_s) or end_s > MAX_CLOCK_S:
        raise SimulationError(
            f"the simulated clock reached {end_s:.3g} s, where float64 no longer resolves an "
            "iteration; a rate or policy parameter is too extreme"
        )
    done = records[records["status"] == "finished"]
    arrival = done["arrival_s"].to_numpy()
    first = done["first_token_s"].to_numpy()
    finish = done["finish_s"].to_numpy()
    bad = ~(np.isfinite(first) & np.isfinite(finish) & (first >= arrival) & (finish >= first))
    if bad.any():
        row = done.iloc[int(np.flatnonzero(bad)[0])]
        raise SimulationError(
            f"request {row['request_id']} finished with inconsistent times (arrival "
            f"{row['arrival_s']}, first token {row['first_token_s']}, finish {row['finish_s']})"
        )
