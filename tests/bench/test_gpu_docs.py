"""docs/gpu.md's device command: within the tool's 2,000 characters, its campaign flags
valid, and its time limits nested so that the pack outlives a run cut off at its limit."""

import importlib.util
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "gpu.md").read_text()


def campaign_module():
    spec = importlib.util.spec_from_file_location("gpu_campaign", ROOT / "bench/gpu_campaign.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def device_command() -> str:
    section = DOC.split("## The command", 1)[1]
    return re.search(r"```\n(.*?)\n```", section, re.S).group(1)


def test_the_command_fits_the_device_tool_and_installs_the_bundle():
    command = device_command()
    assert "\n" not in command and len(command) <= 2000
    assert "--target /tmp/site .gpu-wheels/*.whl" in command
    assert "PYTHONPATH=/tmp/site:$PWD" in command
    assert '`carry` = `[".gpu-wheels"]`' in DOC
    assert (ROOT / ".gitignore").read_text().count("/.gpu-wheels/") == 1


def test_the_campaign_flags_parse_and_the_time_limits_nest(tmp_path):
    command = device_command()
    flags = command.split("python3 bench/gpu_campaign.py", 1)[1].split("2>&1", 1)[0]
    argv = shlex.split(flags.replace("$OUT", str(tmp_path)))
    argv[argv.index("--out") + 1] = str(tmp_path / "campaign")
    campaign = campaign_module()
    campaign._cuda_visible = lambda: True  # the flags as the GPU machine parses them
    args = campaign.parse(argv)
    assert args.pack == tmp_path / "campaign.tar.gz" and args.pack.parent == tmp_path
    outer = int(re.search(r"timeout -k (\d+) (\d+) python3", command).group(2))
    tool = int(re.search(r"`timeout_s` = (\d+)", DOC).group(1))
    assert args.total_s + 20 <= outer < tool <= 600
    assert sum(b for _, b in campaign.STEPS.values()) == args.total_s
