"""Generated bad input: every flag, trace, policy parameter and model config a user can get
wrong ends in exit code 2 and one line naming what to fix, with no traceback and nothing
written or removed."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import policies
from twin.commands.cli import app

runner = CliRunner()
FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TINY_TRACE = "synthetic:n=4,rate=1,prompt=fixed(8),output=fixed(2)"
NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def assert_one_line_error(result, *names: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def refuse(workdir: Path, args: list[str], *names: str, command: str = "simulate") -> str:
    """Run ``twin simulate`` (or ``command``) with ``args`` in a directory holding a user's
    file; the command must fail with one line and leave the directory exactly as it was."""
    (workdir / "notes.txt").write_text("the user's own file\n")
    before = snapshot(workdir)
    out = workdir / "run"
    extra = ["--workers", "1"] if command == "compare" else []
    result = runner.invoke(
        app, [command, "--quiet", "--no-plots", "--out", str(out), *extra, *args]
    )
    line = assert_one_line_error(result, *names)
    assert snapshot(workdir) == before, "a failed command changed the directory"
    return line


@pytest.fixture
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("bad")


def fresh(base: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=base))


# Each flag with values it must refuse; every value is one typer itself accepts, so the
# refusal is the project's own check.
BAD_FLAGS = {
    "--rate": st.one_of(NOT_FINITE, st.floats(max_value=0.0), st.floats(min_value=1e7)),
    "--cv": st.one_of(NOT_FINITE, st.floats(max_value=0.0), st.floats(min_value=101.0)),
    "--rate-scale": st.one_of(NOT_FINITE, st.floats(max_value=1e-7), st.floats(min_value=1e7)),
    "--start": st.one_of(NOT_FINITE, st.floats(max_value=-1e-9)),
    "--duration": st.one_of(NOT_FINITE, st.floats(max_value=0.0)),
    "--slo-ttft": st.one_of(NOT_FINITE, st.floats(max_value=0.0)),
    "--slo-tbt": st.one_of(NOT_FINITE, st.floats(max_value=0.0)),
    "--max-requests": st.integers(max_value=0),
    "--seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63)),
}


@FAST
@given(data=st.data())
def test_a_bad_numeric_flag_is_one_line_naming_it(workdir, data):
    flag = data.draw(st.sampled_from(sorted(BAD_FLAGS)))
    value = data.draw(BAD_FLAGS[flag])
    refuse(fresh(workdir), ["--trace", TINY_TRACE, flag, repr(value)], flag)


COMPARE_FLAGS = ("--start", "--duration", "--max-requests", "--seed", "--slo-ttft", "--slo-tbt")


@FAST
@given(data=st.data())
def test_compare_refuses_the_same_flags_and_bad_rates(workdir, data):
    flag = data.draw(st.sampled_from(COMPARE_FLAGS + ("--rates",)))
    if flag == "--rates":
        value = data.draw(st.sampled_from(["nan", "inf", "-1", "0", "1,x", "", "1e300", "2,-inf"]))
    else:
        value = repr(data.draw(BAD_FLAGS[flag]))
    args = ["--trace", TINY_TRACE, "--policies", "vllm", flag, value]
    refuse(fresh(workdir), args, "--rates" if flag == "--rates" else flag, command="compare")


def _number_fields(name: str) -> list[tuple[str, str]]:
    import dataclasses

    return [
        (f.name, str(f.type))
        for f in dataclasses.fields(policies.params_class(name))
        if str(f.type) in ("int", "float")
    ]


POLICY_PARAMS = [(p, field, kind) for p in policies.names() for field, kind in _number_fields(p)]


@FAST
@given(
    choice=st.sampled_from(POLICY_PARAMS),
    value=st.sampled_from(["nan", "inf", "-inf", "-1", "abc", "", "1e999"]),
    as_fraction=st.booleans(),
)
def test_a_bad_policy_parameter_is_one_line_naming_it(workdir, choice, value, as_fraction):
    policy, field, kind = choice
    if kind == "int" and as_fraction:
        value = "2.5"  # a count must be whole
    args = ["--trace", TINY_TRACE, "--policy", policy, "--policy-arg", f"{field}={value}"]
    refuse(fresh(workdir), args, field)


# ----------------------------------------------------------------------------- traces
CSV_FORMATS = {
    "azure": (
        ["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
        lambda i: [f"2023-11-16 18:15:{10 + i:02d}.0000000", str(100 + i), str(5 + i)],
    ),
    "burstgpt": (
        ["Timestamp", "Request tokens", "Response tokens"],
        lambda i: [str(float(i)), str(100 + i), str(5 + i)],
    ),
    "vidur": (
        ["arrived_at", "num_prefill_tokens", "num_decode_tokens"],
        lambda i: [str(0.5 * i), str(100 + i), str(5 + i)],
    ),
    "table": (
        ["arrival_s", "prompt_tokens", "output_tokens"],
        lambda i: [str(0.5 * i), str(100 + i), str(5 + i)],
    ),
}
BAD_TOKENS = st.sampled_from(["nan", "inf", "-inf", "-5", "12.5", "abc", "1e300", "true"])
BAD_TIMES = st.sampled_from(["nan", "inf", "-inf", "abc", "yesterday"])


@FAST
@given(
    fmt=st.sampled_from(sorted(CSV_FORMATS)),
    rows=st.integers(2, 6),
    data=st.data(),
)
def test_a_corrupt_csv_cell_is_one_line_naming_file_and_row(workdir, fmt, rows, data):
    header, make = CSV_FORMATS[fmt]
    table = [make(i) for i in range(rows)]
    row = data.draw(st.integers(0, rows - 1))
    col = data.draw(st.integers(0, 2))
    table[row][col] = data.draw(BAD_TIMES if col == 0 else BAD_TOKENS)
    base = fresh(workdir)
    path = base / f"trace-{fmt}.csv"
    path.write_text("\n".join(",".join(r) for r in [header, *table]) + "\n")
    refuse(base, ["--trace", str(path)], path.name, "row")


MOONCAKE_BAD = st.sampled_from([12.7, True, "12", None, -1, [], {}, math.inf, 2**70])


@FAST
@given(
    rows=st.integers(1, 5),
    field=st.sampled_from(["timestamp", "input_length", "output_length"]),
    value=MOONCAKE_BAD,
    data=st.data(),
)
def test_a_corrupt_mooncake_field_is_one_line_naming_file_and_line(
    workdir, rows, field, value, data
):
    if field == "timestamp" and _finite_number(value):
        value = "soon"  # any finite number is a valid timestamp offset
    lines = [
        {"timestamp": 100 * i, "input_length": 50 + i, "output_length": 3, "hash_ids": [i]}
        for i in range(rows)
    ]
    bad = data.draw(st.integers(0, rows - 1))
    lines[bad][field] = value
    base = fresh(workdir)
    path = base / "trace.jsonl"
    text = "\n".join(json.dumps(r).replace("Infinity", "1e999") for r in lines) + "\n"
    path.write_text(text)
    refuse(base, ["--trace", str(path)], path.name, f"line {bad + 1}")


def _finite_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------- model configs
BUNDLED = json.loads(
    (Path(__file__).parents[2] / "profiler" / "configs" / "llama-3.1-8b.json").read_text()
)
BAD_CONFIG_FIELDS = {
    "hidden_size": st.sampled_from([0, -4096, 4096.5, "4096", None, 2**40]),
    "num_attention_heads": st.sampled_from([0, 30, 31, "32", 2.5]),
    "num_key_value_heads": st.sampled_from([0, 3, 64, "8", 7.5]),
    "head_dim": st.sampled_from([0, 127.5, "128", -1]),
    "max_position_embeddings": st.sampled_from([0, 1.5, "131072", -1]),
    "rms_norm_eps": st.sampled_from(["x", -1e-5, 0, [1]]),
    "rope_theta": st.sampled_from(["x", -1.0, 0]),
    "vocab_size": st.sampled_from([0, "128256", 1.5, 2**40]),
    "tie_word_embeddings": st.sampled_from(["no", 1, None]),
}


@FAST
@given(data=st.data())
def test_a_bad_model_config_is_one_line_naming_file_and_field(workdir, data):
    field = data.draw(st.sampled_from(sorted(BAD_CONFIG_FIELDS)))
    value = data.draw(BAD_CONFIG_FIELDS[field])
    config = {**BUNDLED, field: value}
    if field == "num_attention_heads" and "head_dim" in config and value in (30, 31):
        del config["head_dim"]  # 4096 is not a multiple of 30 or 31 heads
    base = fresh(workdir)
    path = base / "config.json"
    path.write_text(json.dumps(config))
    line = refuse(base, ["--trace", TINY_TRACE, "--model", str(path)], str(path))
    assert "head" in line or field in line


@pytest.mark.parametrize(
    "args",
    [
        ["--out", ""],
        ["--policy-config", "."],
        ["--policy-config", "missing.json"],
        ["--trace", "synthetic:n=3,rate=1,prompt=fixed(-5)"],
        ["--trace", "synthetic:n=3,rate=1", "--cv", "inf"],
    ],
)
def test_named_cases_are_one_line(workdir, args):
    base = fresh(workdir)
    result = runner.invoke(app, ["simulate", "--quiet", "--no-plots", *args])
    assert_one_line_error(result)
    assert not any(base.iterdir())


def test_an_impossible_out_path_is_one_line(workdir):
    blocker = workdir / "a-file"
    blocker.write_text("x")
    result = runner.invoke(
        app, ["simulate", "--trace", TINY_TRACE, "--quiet", "--out", str(blocker / "run")]
    )
    assert_one_line_error(result, str(blocker))
    assert blocker.read_text() == "x"
