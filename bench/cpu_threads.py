"""Torch threads on a CPU: the same tiny-model replay with one thread and with every core.

Backs the CPU default of ``twin run`` (one thread for models under 50M parameters, see
gpu_runtime/support.py). Both replays run in this process, one after the other, on the
virtual clock (so the two do identical work, decision for decision) and the wall time of
each is compared. On a machine that other work keeps busy the gap widens.

    python bench/cpu_threads.py --requests 30 --out bench/results/cpu_threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import traces  # noqa: E402
from gpu_runtime.build import build_runtime  # noqa: E402
from gpu_runtime.config import RuntimeConfig  # noqa: E402
from gpu_runtime.replay import replay  # noqa: E402


def one(threads: int, requests: int, repeats: int) -> float:
    settings = RuntimeConfig(device="cpu", cpu_threads=threads, num_kv_blocks=4096)
    wl = traces.load("azure-conv").first(requests)
    best = float("inf")
    for _ in range(repeats):
        rt = build_runtime("tiny", settings, "vllm", virtual_clock=True)
        start = time.perf_counter()
        replay(rt, wl, 0)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    single = one(1, args.requests, args.repeats)
    many = one(cores, args.requests, args.repeats)
    result = {
        "what": f"tiny-model replay of {args.requests} azure-conv requests, virtual clock",
        "latency_model": "none: wall time of the CPU replay itself",
        "torch": torch.__version__,
        "cores": cores,
        "one_thread_s": round(single, 3),
        f"{cores}_threads_s": round(many, 3),
        "ratio_many_over_one": round(many / single, 2),
    }
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
