import json
import re

import numpy as np
import pytest

import traces
from traces import TraceError, Workload


def test_azure_full_traces_match_published_means(shared_traces):
    code = traces.load(str(shared_traces / "azure2023_code.csv"))
    conv = traces.load(str(shared_traces / "azure2023_conv.csv"))
    assert len(code) == 8819 and len(conv) == 19366
    assert code.prompt_tokens.mean() == pytest.approx(2048, rel=0.03)
    assert code.output_tokens.mean() == pytest.approx(28, rel=0.03)
    assert conv.prompt_tokens.mean() == pytest.approx(1155, rel=0.03)
    assert conv.output_tokens.mean() == pytest.approx(211, rel=0.03)
    # 7-digit fractional seconds: 18:15:50.9951690 - 18:15:46.6805900
    assert conv.arrival_s[1] == pytest.approx(4.314579, abs=1e-7)
    assert conv.duration_s() == pytest.approx(58 * 60, rel=0.03)


def test_burstgpt_drops_failed_requests_and_counts_them(shared_traces):
    wl = traces.load(str(shared_traces / "burstgpt1_first400.csv"))
    assert wl.notes["format"] == "burstgpt"
    assert len(wl) + wl.notes["dropped_failed"] == 400
    assert wl.notes["dropped_failed"] > 0
    assert (wl.output_tokens > 0).all()


def test_burstgpt_later_layout_with_session_columns(tmp_path):
    path = tmp_path / "burst.csv"
    path.write_text(
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,"
        "Log Type\n0,1,0.5,ChatGPT,100,20,120,Conversation log\n"
        "3,1,0.7,ChatGPT,50,0,50,Conversation log\n7,2,1.1,GPT-4,80,40,120,API log\n"
    )
    wl = traces.load(str(path))
    assert list(wl.arrival_s) == [0.0, 7.0]
    assert wl.notes["dropped_failed"] == 1


def test_mooncake_keeps_prefix_hashes(shared_traces):
    wl = traces.load(str(shared_traces / "mooncake_synthetic_trace.jsonl"))
    assert len(wl) == 3993
    assert wl.prefix_hashes[0][:3] == (0, 1, 2)
    assert len(wl.prefix_hashes[0]) == -(-wl.prompt_tokens[0] // 512)
    assert wl.prompt_tokens.mean() > 8000


@pytest.mark.parametrize(
    "name",
    ["sharegpt_lengths_llama2_tokenizer.csv", "arxiv_summarization_lengths_llama2_tokenizer.csv"],
)
def test_length_only_traces_get_poisson_arrivals(shared_traces, name):
    wl = traces.load(str(shared_traces / name), rate=5.0, seed=3)
    assert wl.rate() == pytest.approx(5.0, rel=0.05)
    again = traces.load(str(shared_traces / name), rate=5.0, seed=3)
    np.testing.assert_array_equal(wl.arrival_s, again.arrival_s)


def test_gamma_arrivals_have_the_asked_cv():
    wl = traces.load("synthetic:n=20000,rate=10,cv=3,prompt=fixed(10),output=fixed(5)")
    gaps = np.diff(wl.arrival_s)
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.08)


def test_synthetic_lengths():
    wl = traces.synthetic(20000, 5.0, prompt="lognormal(1000,0.5)", output="uniform(10,20)", seed=1)
    assert wl.prompt_tokens.mean() == pytest.approx(1000, rel=0.03)
    assert wl.output_tokens.min() >= 10 and wl.output_tokens.max() <= 20


@pytest.mark.parametrize("name", traces.bundled_names()[:6])
def test_bundled_names_load_with_nothing_else(name):
    wl = traces.load(name, rate=2.0 if name in ("sharegpt", "arxiv") else None)
    assert len(wl) > 300 and wl.name == name and "bundled" in wl.source


def test_bundled_azure_slice_is_ten_minutes():
    wl = traces.load("azure-conv")
    assert 9.5 * 60 < wl.duration_s() <= 600


def test_format_is_detected_and_can_be_forced(shared_traces, tmp_path):
    assert (
        traces.load(str(shared_traces / "azure2023_code.csv"), format="azure").notes["format"]
        == "azure"
    )
    with pytest.raises(TraceError, match="unknown trace format 'csv'"):
        traces.load(str(shared_traces / "azure2023_code.csv"), format="csv")
    with pytest.raises(TraceError, match="missing column 'Timestamp'"):
        traces.load(str(shared_traces / "azure2023_code.csv"), format="burstgpt")


def test_workload_operations():
    wl = traces.load("synthetic:n=1000,rate=10,seed=4")
    win = wl.window(10.0, 20.0)
    assert win.arrival_s.min() >= 0 and win.arrival_s.max() < 10
    assert len(win) == np.sum((wl.arrival_s >= 10) & (wl.arrival_s < 20))
    assert wl.scale_rate(2.0).rate() == pytest.approx(2 * wl.rate())
    assert wl.with_rate(3.0).rate() == pytest.approx(3.0)
    assert len(wl.first(10)) == 10
    a, b = wl.sample(50, seed=1), wl.sample(50, seed=1)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert np.all(np.diff(a.arrival_s) >= 0)
    frame = wl.to_frame()
    assert Workload.from_frame(frame).rate() == pytest.approx(wl.rate())


def write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,10\n",
            "missing column 'GeneratedTokens'",
        ),
        (
            HEADER + "2023-11-16 18:17:03.97,-5,3\n",
            "row 1: column 'ContextTokens' is negative",
        ),
        (
            HEADER + "2023-11-16 18:17:03.97,12,3\n2023-11-16 18:17:04.1,ten,3\n",
            "row 2: column 'ContextTokens' is 'ten'",
        ),
        (
            HEADER + "2023-11-16 18:17:05,1,3\n2023-11-16 18:17:04,1,3\n",
            "row 2: column 'TIMESTAMP' goes back in time",
        ),
        (
            HEADER + "2023-11-16 18:17:05,1,3\n,1,3\n",
            "row 2: column 'TIMESTAMP' has no timestamp",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,3\n",
            "row 1: TIMESTAMP 'yesterday' is not a date",
        ),
        ("", "is empty"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "header but no rows"),
        ("a,b\n1,2\n", "cannot tell the trace format"),
        ("num_prefill_tokens,num_decode_tokens\n5,6\n", "needs an arrival rate; pass --rate"),
    ],
)
def test_malformed_csv_gives_one_line_error_naming_file_and_row(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(TraceError) as err:
        traces.load(path)
    assert message in str(err.value)
    assert path in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_jsonl(tmp_path):
    path = write(
        tmp_path, '{"timestamp": 0, "input_length": 5, "output_length": 2}\n{oops\n', "m.jsonl"
    )
    with pytest.raises(TraceError, match="line 2 is not valid JSON"):
        traces.load(path)
    path = write(tmp_path, '{"timestamp": 0, "input_length": 5}\n', "n.jsonl")
    with pytest.raises(TraceError, match="line 1 has no field 'output_length'"):
        traces.load(path)


def test_unknown_name_lists_the_bundled_traces():
    with pytest.raises(TraceError, match="azure-conv, azure-code"):
        traces.load("azure-chat")


@pytest.mark.parametrize(
    "spec",
    [
        "synthetic:n=10,prompt=normal(3)",
        "synthetic:n=10,bogus=1",
        "synthetic:n=10",
        "synthetic:n=ten,rate=1",
    ],
)
def test_bad_synthetic_specs(spec):
    with pytest.raises(TraceError):
        traces.load(spec)


def test_vidur_processed_traces_keep_their_arrivals(tmp_path):
    path = tmp_path / "AzureLLMInferenceTrace_conv_processed.csv"
    path.write_text(
        "arrived_at,num_prefill_tokens,num_decode_tokens\n10.0,100,10\n10.5,200,20\n12.0,50,5\n"
    )
    wl = traces.load(str(path))
    assert wl.notes["format"] == "vidur"
    assert list(wl.arrival_s) == [0.0, 0.5, 2.0]
    assert list(wl.prompt_tokens) == [100, 200, 50]
    # --rate rescales the trace's own arrivals rather than drawing Poisson ones.
    faster = traces.load(str(path), rate=2.0)
    assert faster.rate() == pytest.approx(2.0)
    assert faster.arrival_s[1] / faster.arrival_s[2] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input_length", 12.7, "line 1: input_length must be a whole number"),
        ("input_length", True, "line 1: input_length must be a whole number"),
        ("output_length", -3, "line 1: output_length must be in [0, "),
        ("timestamp", "noon", "line 1: timestamp must be a number"),
    ],
)
def test_mooncake_fields_are_checked_not_truncated(tmp_path, field, value, message):
    row = {"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}
    row[field] = value
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(TraceError, match=re.escape(message)):
        traces.load(str(path))


def test_mixed_time_zones_in_an_azure_trace_are_one_line(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900+00:00,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
    )
    with pytest.raises(TraceError, match="mixes time zones"):
        traces.load(str(path))


@pytest.mark.parametrize(
    "spec",
    [
        "synthetic:n=3,rate=1,prompt=fixed(-5)",
        "synthetic:n=3,rate=1,output=uniform(0,4)",
        "synthetic:n=3,rate=1,seed=-1",
        "synthetic:n=3,rate=1,cv=inf",
        "synthetic:n=3,rate=nan",
    ],
)
def test_synthetic_specs_refuse_what_they_would_clamp_or_crash_on(spec):
    with pytest.raises(TraceError):
        traces.load(spec)
