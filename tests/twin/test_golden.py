"""A seeded run diffed against a saved summary: any change to the engine's numbers shows here.

Regenerate deliberately with ``TWIN_UPDATE_GOLDEN=1 python -m pytest tests/twin/test_golden.py``
and explain the change in the commit.
"""

import json
import os
from pathlib import Path

import pytest

from twin.experiment import SimConfig, simulate

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "azure_code_vllm": SimConfig(trace="azure-code", max_requests=300, rate_scale=2.0),
    "azure_conv_static_split": SimConfig(
        trace="azure-conv",
        max_requests=300,
        policy="static-split",
        rate_scale=3.0,
        policy_args={"decode_sms": 56},
        latency="datasheet",  # the roofline stays bit for bit
    ),
}
VOLATILE = {"wall_s"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_summary_matches_the_saved_run(case):
    summary = {k: v for k, v in simulate(CASES[case]).summary.items() if k not in VOLATILE}
    path = GOLDEN / f"{case}.json"
    if os.environ.get("TWIN_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert summary.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert summary[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
        else:
            assert summary[key] == value, key
