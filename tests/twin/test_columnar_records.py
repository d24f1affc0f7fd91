"""Iterations and timeline held columnar, and the --token-times switch of `twin simulate`."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import policies
import traces
from policies import Slo
from twin.commands.cli import app
from twin.core.records import ITERATION_COLUMNS
from twin.sim import EngineConfig, Simulator


class KeepingRuns(Simulator):
    """Also keeps every run object, to expand the table the straightforward way."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept = []

    def _record(self, run, step_ends):
        self.kept.append((run, step_ends))
        super()._record(run, step_ends)


def expanded(kept):
    """Each run's iterations row by row, straight from the run objects."""
    rows = []
    for run, ends in kept:
        for i, end in enumerate(ends):
            s, j = _step_shape(run, i)
            ctx0 = s.decode_ctx_sum + sum(s.prefill_q) + sum(s.prefill_ctx)
            rows.append(
                {
                    "lane": run.lane.value,
                    "start_s": run.start if i == 0 else ends[i - 1],
                    "end_s": end,
                    "sms": run.sms,
                    "prefill_tokens": s.prefill_tokens,
                    "prefill_chunks": len(s.prefill_q),
                    "decode_requests": s.n_decode,
                    "context_tokens": ctx0 + s.n_decode * j,
                    "prefill_context_tokens": sum(s.prefill_ctx),
                    "predicted_s": run.predicted[i],
                    "co_runner": run.co_label,
                }
            )
    return pd.DataFrame(rows, columns=ITERATION_COLUMNS)


def _step_shape(run, i):
    """The shape of a run's ``i``-th iteration's segment and the iteration's place in it: a
    run's batch throughout, or with a decode phase its first step then each segment's."""
    phase = run.phase
    if phase is None:
        return run.shape, i
    if phase.offset:
        if i == 0:
            return run.shape, 0
        i -= 1
    for shape, k in phase.segments:
        if i < k:
            return shape, i
        i -= k
    raise AssertionError("an iteration past the run's segments")


@pytest.mark.parametrize("policy", ["vllm", "nexus"])
def test_iteration_table_equals_the_runs_expanded(h100_model, policy):
    wl = traces.load("azure-code").first(200).scale_rate(3.0)
    sim = KeepingRuns(wl, policies.get(policy), h100_model, Slo(), EngineConfig())
    sim.run()
    table = pd.DataFrame(sim.iteration_table())
    assert any(run.steps > 1 for run, _ in sim.kept)  # steady runs were fast-forwarded
    if policy == "vllm":  # prefill steps with the decoding after them, past finishes
        assert any(run.phase is not None and run.phase.offset for run, _ in sim.kept)
        assert any(run.phase is not None and len(run.phase.segments) > 1 for run, _ in sim.kept)
    pd.testing.assert_frame_equal(table, expanded(sim.kept), check_exact=True, check_dtype=False)
    assert table["end_s"].dtype == np.float64 and table["sms"].dtype == np.int64
    timeline = sim.timeline_table()
    # one sample at every completion and every partition change
    assert len(timeline["time_s"]) == len(sim.kept) + sim.stats.partition_changes
    assert np.all(np.diff(timeline["time_s"]) >= 0)


runner = CliRunner()


def test_simulate_without_token_times_writes_the_same_summary_and_plots(tmp_path):
    args = ["simulate", "--quiet", "--trace", "azure-conv", "--max-requests", "120"]
    outs = {}
    for flag in ("--token-times", "--no-token-times"):
        out = tmp_path / flag.strip("-")
        result = runner.invoke(app, [*args, flag, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert (out / "latency_cdf.png").is_file() and (out / "timeline.png").is_file()
        outs[flag] = out
    kept, lean = (pd.read_parquet(outs[f] / "records.parquet") for f in outs)
    assert "token_times_s" in kept and "token_times_s" not in lean
    assert [len(t) for t in kept["token_times_s"]] == kept["output_tokens"].tolist()
    pd.testing.assert_frame_equal(kept.drop(columns="token_times_s"), lean)
    a, b = (json.loads((outs[f] / "summary.json").read_text()) for f in outs)
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b
    configs = [json.loads((outs[f] / "config.json").read_text()) for f in outs]
    assert [c["token_times"] for c in configs] == [True, False]


def test_dense_timelines_are_drawn_binned(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from twin.outputs import compare_plots

    n = 20_000  # state changes of a long run
    t = np.cumsum(np.full(n, 0.01))
    timeline = pd.DataFrame(
        {
            "time_s": t,
            "mixed_sms": np.where(np.arange(n) % 2, 132.0, 0.0),
            "prefill_sms": np.where(np.arange(n) % 2, 0.0, 40.0),
            "decode_sms": np.where(np.arange(n) % 2, 0.0, 92.0),
            "kv_usage": (np.arange(n) % 100) / 100,
        }
    )
    figures = []

    def keep(fig, title, label, path):
        figures.append(fig)
        return path

    monkeypatch.setattr(compare_plots, "finish", keep)
    run = SimpleNamespace(timeline=timeline, summary={"latency_model": "datasheet"})
    compare_plots.partition_timelines({"nexus": run}, 132, "t", tmp_path / "p.png")
    lines = [line for ax in figures[0].axes for line in ax.get_lines()]
    assert lines and max(len(line.get_xdata()) for line in lines) <= 2 * compare_plots.KV_BINS
