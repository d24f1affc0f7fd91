"""Options several ``twin`` commands share, declared once so that their names and help agree.

A command declares ``trace: Trace = "azure-conv"``; typer reads the option from the alias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from policies import Slo
from policies.numbers import check_number
from twin.errors import TwinError
from twin.outputs.metrics import TBT_STATISTICS

Trace = Annotated[str, typer.Option(help="Bundled trace name or a trace file path.")]
TraceFormat = Annotated[str | None, typer.Option("--format", help="Force the trace format.")]
TraceTokenizer = Annotated[
    str | None,
    typer.Option(
        help="Directory with a tokenizer.json to count the tokens of text traces (ShareGPT, "
        "vLLM custom JSONL); without it their lengths are estimated at 4 characters a token."
    ),
]
Rate = Annotated[
    float | None, typer.Option(help="Mean request rate (req/s); needed by length-only traces.")
]
ArrivalCv = Annotated[float, typer.Option(help="Arrival CV for synthetic arrivals (1 = Poisson).")]
RateScale = Annotated[float, typer.Option(help="Multiply the trace's request rate.")]
WindowStart = Annotated[float, typer.Option(help="Start of the trace window (s).")]
WindowLength = Annotated[float | None, typer.Option(help="Length of the trace window (s).")]
MaxRequests = Annotated[int | None, typer.Option(help="Keep only the first N requests.")]
Concurrency = Annotated[
    int | None,
    typer.Option(help="Closed loop: N clients, each sending the trace's next request (its "
                 "lengths; arrival times ignored) when its last one finishes."),
]

PolicyName = Annotated[
    str | None, typer.Option(help="Policy name (see `twin policies`; vllm when not given).")
]
PolicyArgs = Annotated[
    list[str], typer.Option("--policy-arg", help="Policy parameter key=value (repeatable).")
]
PolicyConfig = Annotated[
    Path | None,
    typer.Option(help="JSON with the policy and its parameters (e.g. from a policy search)."),
]

DatasheetGpu = Annotated[
    str, typer.Option(help="GPU to simulate (see `twin gpus`), used when no --profile is given.")
]
Stack = Annotated[
    str, typer.Option(help="Serving stack whose measured kernels time the operators: vllm, "
                      "sglang or trtllm.")
]
Latency = Annotated[
    str, typer.Option(help="Operator times: measured (published tables; a datasheet roofline "
                      "for GPUs they lack) or datasheet (the roofline everywhere).")
]
Profile = Annotated[
    str | None, typer.Option(help="Measured or calibrated profile directory (`twin profile`).")
]

SloTtft = Annotated[
    float, typer.Option(help="TTFT SLO (s); default from MLPerf Inference's Llama-3.1-8B server.")
]
SloTbt = Annotated[float, typer.Option(help="TBT SLO (s), per request (see --tbt-stat).")]
TbtStat = Annotated[
    str,
    typer.Option(help="Per-request TBT statistic checked against the SLO: mean, p90, p99 or max."),
]

Force = Annotated[bool, typer.Option(help="Overwrite an earlier result in --out.")]
Plots = Annotated[bool, typer.Option(help="Write PNG plots.")]
TokenTimes = Annotated[
    bool | None,
    typer.Option(
        "--token-times/--no-token-times",
        help="Write every token's time (records.parquet token_times_s). Default: for runs of "
        "up to 100,000 requests. Metrics, summary and plots are the same either way.",
        show_default=False,
    ),
]

DEFAULT_SLO = Slo()


def slo_from(ttft_s: float, tbt_s: float, tbt_statistic: str) -> Slo:
    """The SLOs the flags ask for; a statistic we do not compute is a one-line error."""
    if tbt_statistic not in TBT_STATISTICS:
        raise TwinError(f"--tbt-stat {tbt_statistic!r}: use {', '.join(TBT_STATISTICS)}")
    positive_flag(ttft_s, "--slo-ttft")
    positive_flag(tbt_s, "--slo-tbt")
    return Slo(ttft_s, tbt_s, tbt_statistic)


def positive_flag(value: float, flag: str, high: float | None = None) -> float:
    """A flag that must be a positive finite number (seconds, rates, factors)."""
    return check_number(value, flag, low=0.0, low_open=True, high=high, error=TwinError)
