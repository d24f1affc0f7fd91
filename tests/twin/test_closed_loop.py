"""Closed-loop workloads: N clients, each sending its next request when its last one ends."""

import numpy as np
import pytest

from twin.errors import SimulationError, TwinError
from twin.experiment import SimConfig, simulate

FIXED = "synthetic:n=120,rate=1,prompt=fixed(600),output=fixed(40)"


def in_flight(records, t):
    return int(((records.arrival_s <= t) & (records.finish_s > t)).sum())


def test_n_clients_keep_n_requests_in_flight_and_send_when_one_ends():
    result = simulate(SimConfig(trace=FIXED, concurrency=8))
    r = result.records.sort_values("arrival_s")
    assert len(r) == 120 and (r.status == "finished").all()
    assert (r.arrival_s.iloc[:8] == 0.0).all() and (r.arrival_s.iloc[8:] > 0).all()
    finishes = r.finish_s.to_numpy()
    assert all(np.isclose(finishes, a, rtol=0, atol=1e-9).any() for a in r.arrival_s.iloc[8:])
    checks = np.linspace(0, r.finish_s.max() * 0.99, 50)
    counts = [in_flight(r, t) for t in checks]
    assert max(counts) == 8
    # While requests remain to send, every client has one in flight.
    last_send = r.arrival_s.max()
    assert all(c == 8 for t, c in zip(checks, counts, strict=True) if t < last_send)


def test_more_clients_mean_longer_decode_steps_and_a_seeded_run_repeats():
    one = simulate(SimConfig(trace=FIXED, concurrency=1)).summary
    many = simulate(SimConfig(trace=FIXED, concurrency=32)).summary
    assert many["tpot_mean_s"] > one["tpot_mean_s"]
    assert many["throughput_rps"] > one["throughput_rps"]
    again = simulate(SimConfig(trace=FIXED, concurrency=32)).summary
    assert again["tpot_mean_s"] == many["tpot_mean_s"]


def test_sampled_lengths_come_from_the_trace_in_order():
    cfg = SimConfig(trace="azure-conv", max_requests=60, concurrency=4)
    result = simulate(cfg)
    open_loop = simulate(SimConfig(trace="azure-conv", max_requests=60))
    a = result.records.sort_values("request_id")
    b = open_loop.records.sort_values("request_id")
    assert a.prompt_tokens.tolist() == b.prompt_tokens.tolist()
    assert a.output_tokens.tolist() == b.output_tokens.tolist()
    assert not np.allclose(a.arrival_s, b.arrival_s)


def test_bad_concurrency_is_an_error():
    with pytest.raises((SimulationError, TwinError), match="concurrency"):
        simulate(SimConfig(trace=FIXED, concurrency=0))
    with pytest.raises((SimulationError, TwinError), match="concurrency"):
        simulate(SimConfig(trace=FIXED, concurrency=4, policy="disagg"))
