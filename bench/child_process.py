"""A benchmark's child process: run it, wait with ``os.wait4`` for its own resource usage
(CPU seconds, peak RSS), and kill it past a wall-clock limit."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def run_child(
    cmd: list[str],
    log: Path,
    timeout: float,
    env: dict | None = None,
    cwd: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
    poll_s: float = 0.02,
) -> dict:
    """Run ``cmd`` with its output in ``log``; what it cost and how it ended."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, preexec_fn=preexec_fn
        )
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                proc.kill()
                timed_out = True
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(poll_s)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "process_wall_s": time.perf_counter() - start,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,  # kilobytes on Linux
    }
