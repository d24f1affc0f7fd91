"""Green-context partitions and a small sweep on a real GPU (skipped without CUDA)."""

import pytest

from profiler.partition import PartitionError, probe


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def pool():
    from profiler.partition import PartitionPool

    try:
        p = PartitionPool(sizes=None)
    except PartitionError as exc:
        pytest.skip(f"no green contexts here: {exc}")
    yield p
    p.close()


def test_partitions_report_the_requested_sm_counts(pool):
    n, step, lo = pool.info.num_sms, pool.info.granularity, pool.info.min_sms
    for k in range(lo, n - lo + 1, step):
        assert k in pool.sm_counts()
        assert n - k in pool.sm_counts()
        assert (k, n - k) in pool.splits() and (n - k, k) in pool.splits()
        prefill, decode = pool.streams(k, n - k)
        assert prefill is not decode
    with pytest.raises(PartitionError, match="no split"):
        pool.streams(lo + 1, n - lo - 1)


def test_a_small_partition_runs_a_big_gemm_slower(pool):
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    small = pool.info.min_sms

    def timed(stream):
        with torch.cuda.stream(stream):
            torch.mm(a, a)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for _ in range(3):
                torch.mm(a, a)
            end.record(stream)
        stream.synchronize()
        return start.elapsed_time(end)

    torch.cuda.synchronize()
    ratio = timed(pool.stream(small)) / timed(pool.stream(pool.info.num_sms))
    # Compute-bound: roughly num_sms / small times slower; far more than noise.
    assert ratio > 0.4 * pool.info.num_sms / small


def test_quick_sweep_on_a_small_grid_fits(tmp_path):
    from profiler import load_model_config
    from profiler.fit import fit_profile
    from profiler.grid import SweepGrid
    from profiler.profile_io import read_meta, read_samples, write_fit, write_meta, write_samples
    from profiler.sweep import gpu_sweep

    info = probe(0)
    g = max(info.min_sms, info.granularity)
    n = info.num_sms
    grid = SweepGrid(
        sms=(g, 4 * g, n),
        gemm_tokens=(1, 256, 4096),
        head_rows=(1, 64),
        prefill=((1024, 0), (512, 2048)),
        decode=((8, 1024), (64, 512)),
        other_tokens=(1, 1024),
        iter_prefill=((512, 0),),
        iter_decode=((16, 512),),
        corun_decode_sms=(4 * g,),
        corun_shapes=((1024, 0, 32, 512),),
        repeats=5,
        name="test",
    )
    try:
        samples, meta = gpu_sweep(load_model_config("llama-3.1-8b"), grid=grid)
    except PartitionError as exc:
        pytest.skip(f"no green contexts here: {exc}")
    assert not meta["skipped"], meta["skipped"]
    assert meta["num_sms"] == n and meta["device"]
    write_meta(tmp_path, meta)
    write_samples(tmp_path, samples)
    samples, meta = read_samples(tmp_path), read_meta(tmp_path)
    assert set(samples["sms"]) >= {g, 4 * g, n}
    big = samples[(samples["op_class"] == "peak")].set_index("sms")["median_s"]
    assert big[g] > 3 * big[n]
    fit = fit_profile(samples, meta)
    write_fit(tmp_path, fit)
    from profiler.fitted import FittedModel

    model = FittedModel.from_profile(tmp_path)
    assert model.label.startswith("measured on ")
