import numpy as np

from twin.outputs.plot_style import step_summary, wrap


def test_step_summary_is_the_time_weighted_mean_and_range_of_each_bin():
    # 10 SMs for 1 s, then 30 SMs for 3 s: one bin over all of it averages to 25
    t = np.array([0.0, 1.0, 4.0])
    v = np.array([10.0, 30.0, 30.0])
    start, mean, lo, hi = step_summary(t, v, bins=1)
    assert start.tolist() == [0.0]
    assert mean.tolist() == [25.0] and lo.tolist() == [10.0] and hi.tolist() == [30.0]
    start, mean, lo, hi = step_summary(t, v, bins=4)
    assert mean.tolist() == [10.0, 30.0, 30.0, 30.0]
    assert lo.tolist() == [10.0, 30.0, 30.0, 30.0] and hi.tolist() == [30.0, 30.0, 30.0, 30.0]


def test_a_signal_that_flips_often_keeps_its_mean_and_range():
    t = np.arange(0, 1000.0, 0.5)
    v = np.where(np.arange(t.size) % 2 == 0, 40.0, 88.0)
    _, mean, lo, hi = step_summary(t, v, bins=10)
    assert np.allclose(mean, 64.0, atol=0.5)
    assert (lo == 40).all() and (hi == 88).all()


def test_titles_wrap_to_the_figure():
    text = "word " * 60
    assert max(len(line) for line in wrap(text, 6).splitlines()) < len(text)
    assert wrap("", 6) == ""


def test_each_run_kind_names_what_timed_it():
    from twin.outputs.writer import plot_label

    model = "H100 roofline (datasheet estimate, not a measurement)"
    assert plot_label({"latency_model": model}) == model
    wall = plot_label({"latency_model": model, "clock": "wall", "device": "cuda:0"})
    assert wall.startswith("none for the times: measured on cuda:0") and model in wall
    virtual = plot_label({"latency_model": model, "clock": "virtual"})
    assert virtual.startswith(model) and "virtual clock" in virtual


def test_cdf_points_keep_the_extremes_and_the_ranks_of_a_large_sample():
    import numpy as np

    from twin.outputs.plots import cdf_points

    values = np.random.default_rng(0).exponential(size=1_000_003)
    xs, fractions = cdf_points(values, points=1000)
    assert xs.size <= 1000
    assert xs[0] == values.min() and xs[-1] == values.max() and fractions[-1] == 1.0
    # each drawn point is the sample's own quantile at its fraction
    exact = np.sort(values)[(fractions * values.size).round().astype(int) - 1]
    np.testing.assert_array_equal(xs, exact)
    small_x, small_f = cdf_points(np.array([3.0, 1.0, 2.0]))
    np.testing.assert_array_equal(small_x, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(small_f, [1 / 3, 2 / 3, 1.0])
