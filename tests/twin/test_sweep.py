"""The sweep runner: executors agree, resume loses and repeats nothing, failures are rows."""

import pandas as pd
import pytest

from twin.errors import TwinError
from twin.experiment import SimConfig
from twin.sweep import (
    InProcessExecutor,
    ProcessExecutor,
    load_results,
    make_executor,
    run_sweep,
    spec_hash,
)

TIMING = ("wall_s",)


def specs(n_rates=3):
    return [
        SimConfig(trace="azure-conv", policy=p, rate_scale=r, max_requests=60)
        for p in ("vllm", "nexus")
        for r in range(1, n_rates + 1)
    ]


def comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in TIMING if c in table]).reset_index(drop=True)


def test_spec_hash_is_stable_and_tells_specs_apart():
    a, b = specs()[:2]
    assert spec_hash(a) == spec_hash(SimConfig(**a.__dict__))
    assert spec_hash(a) != spec_hash(b)


def test_in_process_and_process_executors_give_identical_tables():
    serial = run_sweep(specs(), InProcessExecutor(), progress=False)
    pool = ProcessExecutor(2)
    try:
        parallel = run_sweep(specs(), pool, progress=False)
    finally:
        pool.close()
    assert len(serial) == 6 and (serial["status"] == "ok").all()
    pd.testing.assert_frame_equal(comparable(serial), comparable(parallel))


def test_resume_after_a_crash_loses_and_repeats_nothing(tmp_path):
    results = tmp_path / "sweep.parquet"
    seen = []

    def crash_after_two(row):
        seen.append(row["spec_hash"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(specs(), InProcessExecutor(), results, progress=False, on_row=crash_after_two)
    saved = load_results(results)
    assert list(saved["spec_hash"]) == seen  # both finished rows were kept
    rerun = []
    table = run_sweep(
        specs(), InProcessExecutor(), results, progress=False, on_row=lambda r: rerun.append(r)
    )
    assert len(rerun) == 4 and not set(r["spec_hash"] for r in rerun) & set(seen)
    assert len(table) == 6 and table["spec_hash"].is_unique
    assert list(table["spec_hash"]) == [spec_hash(s) for s in specs()]
    assert len(load_results(results)) == 6


def test_a_failing_spec_is_a_row_and_the_sweep_goes_on(tmp_path):
    bad = SimConfig(
        trace="azure-conv", policy="static-split", max_requests=20, policy_args={"decode_sms": 5}
    )
    table = run_sweep([bad, *specs(1)], InProcessExecutor(), tmp_path / "s.parquet", progress=False)
    assert list(table["status"]) == ["error", "ok", "ok"]
    assert "not a valid split" in table["error"].iloc[0]
    # Error rows are retried on resume; ok rows are not.
    again = []
    run_sweep(
        [bad, *specs(1)],
        InProcessExecutor(),
        tmp_path / "s.parquet",
        progress=False,
        on_row=again.append,
    )
    assert [r["status"] for r in again] == ["error"]


def test_executor_choice_and_bad_worker_counts():
    assert isinstance(make_executor(1), InProcessExecutor)
    assert isinstance(make_executor(2), ProcessExecutor)
    with pytest.raises(TwinError, match="--workers"):
        make_executor(-1)


@pytest.mark.slow
def test_ray_executor_gives_the_same_table():
    pytest.importorskip("ray")
    from twin.sweep import RayExecutor

    ex = RayExecutor("auto", num_cpus=2)
    try:
        on_ray = run_sweep(specs(2), ex, progress=False)
    finally:
        ex.close()
    serial = run_sweep(specs(2), InProcessExecutor(), progress=False)
    pd.testing.assert_frame_equal(comparable(serial), comparable(on_ray))


def test_ray_flag_without_ray_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(TwinError, match=r"pip install 'twin\[ray\]'"):
        make_executor(0, ray="auto")
