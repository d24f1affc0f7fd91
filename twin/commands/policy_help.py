"""``twin policies``: every policy's parameters with default, unit and a one-line meaning."""

from __future__ import annotations

import dataclasses

# parameter -> (unit, meaning). Shared names mean the same thing in every policy.
PARAM_DOCS: dict[str, tuple[str, str]] = {
    "max_num_batched_tokens": ("tokens", "most tokens (prefill chunks + decodes) in one batch"),
    "max_num_seqs": ("requests", "most requests running (holding KV cache) at once"),
    "chunked_prefill_size": ("tokens", "most prompt tokens prefilled in one batch"),
    "max_running_requests": (
        "requests",
        "most requests running (holding KV cache) at once; 0: derived from the KV pool",
    ),
    "new_token_ratio": (
        "fraction",
        "share of running requests' remaining output reserved in KV before admitting more",
    ),
    "enable_prefix_caching": ("bool", "reuse cached full KV blocks of shared prompt prefixes"),
    "watermark": (
        "fraction",
        "share of KV blocks kept free when admitting a new request (vLLM's watermark)",
    ),
    "init_new_token_ratio": (
        "fraction",
        "share of running requests' clipped output reserved in KV at start and after retraction",
    ),
    "min_new_token_ratio_factor": ("x", "floor of the decaying ratio, times its initial value"),
    "new_token_ratio_decay_steps": (
        "steps",
        "decode steps over which the ratio decays to its floor",
    ),
    "retract_decode_steps": ("steps", "decode steps the kept requests must fit after a retraction"),
    "clip_max_new_tokens": ("tokens", "most output tokens of one request counted in the reserve"),
    "decode_sms": ("SMs", "SMs given to the decode lane; prefill gets the rest"),
    "kv_threshold": (
        "fraction",
        "KV-cache usage above which the split favours decode instead of prefill",
    ),
    "decode_slack": ("x", "how much slower than on all SMs decode may run in prefill priority"),
    "prefill_slack": ("x", "how much slower than on all SMs prefill may run in decode priority"),
    "hysteresis": ("fraction", "least change of the split, as a share of the SMs, that is applied"),
    "aging": ("tokens/s", "prefill queue score credit per second waited (against starvation)"),
    "step_fraction": ("fraction", "step of the split search, as a share of the SMs"),
    "lookahead": (
        "steps",
        "decode steps overlapping one prefill batch in the split objective; 0: chosen with it",
    ),
    "max_lookahead": ("steps", "largest look-ahead tried when it is chosen with the split"),
    "tbt_target_s": ("s", "TBT the split must meet; 0 means the run's --slo-tbt"),
    "link_gb_s": ("GB/s", "KV transfer bandwidth from the prefill GPU to the decode GPU"),
    "link_latency_s": ("s", "fixed latency of one KV transfer"),
}


def describe(name: str) -> list[tuple[str, str, str, str]]:
    """(parameter, default, unit, meaning) for each parameter of policy ``name``."""
    import policies

    rows = []
    for f in dataclasses.fields(policies.params_class(name)):
        unit, meaning = PARAM_DOCS.get(f.name, ("", "(undocumented)"))
        rows.append((f.name, repr(f.default), unit, meaning))
    return rows


def print_policies() -> None:
    from rich.markup import escape

    import policies
    from twin.commands.console import console

    for name in policies.names():
        doc = (policies.params_class(name) and _summary(name)) or ""
        console.print(f"[bold]{name}[/]  {escape(doc)}", highlight=False, soft_wrap=True)
        for param, default, unit, meaning in describe(name):
            line = f"  {param}={escape(default)} [dim]({escape(unit)})[/]  {escape(meaning)}"
            console.print(line, highlight=False, soft_wrap=True)
    console.print("set one with --policy-arg NAME=VALUE, or many with --policy-config FILE.json")


def _summary(name: str) -> str:
    import sys

    import policies

    module = sys.modules.get(policies.params_class(name).__module__)
    paragraph = (module.__doc__ or "").strip().split("\n\n")[0] if module else ""
    return " ".join(paragraph.split())
