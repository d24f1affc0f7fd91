"""CPU spent in the per-decision KV passes, this tree's against another commit's, side by side.

Whole simulations of one trace run in this process, alternating between this tree's
``KVCache.grow_decodes`` and ``KVBudget.decode_needs`` and the ones ``policies/kvcache.py`` has
at ``--baseline`` (loaded from ``git show`` into a module of its own and bound onto the same
classes, so everything else is the same code). A light timer around each call sums its CPU;
the script prints each function's and the whole loop's minimum over the repeats and the ratio
current/baseline. Both variants must simulate the same iterations, or it stops.

    python bench/kv_pass_cost.py --trace PATH/TO/azure2023_conv.csv --scales 1,4 --repeats 4

``--setup vidur`` (the default) is bench/vs_vidur.py's twin side: Llama-2-7B on the datasheet
roofline (profiler/configs/llama-2-7b.json; every operator's time modelled from peak FLOP/s and
HBM bandwidth), vllm with 4,096 batched tokens and 128 sequences, 6,499 KV blocks of 16 tokens.
``--setup sim_speed`` is bench/sim_speed.py's: Llama-3.1-8B on the default latency model (the
measured operator tables), vllm's and the engine's defaults.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from out_path import writable_out  # noqa: E402  (beside this file)

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = (("KVCache", "grow_decodes"), ("KVBudget", "decode_needs"))


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def baseline_module(rev: str, folder: Path):
    """``policies/kvcache.py`` as it is at ``rev``, imported as a module of its own."""
    try:
        source = git("show", f"{rev}:policies/kvcache.py")
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        raise SystemExit(
            f"--baseline {rev}: no policies/kvcache.py there ({detail.strip()})"
        ) from None
    path = folder / "kvcache_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("kvcache_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", required=True)
    parser.add_argument("--baseline", default="main", metavar="REV")
    parser.add_argument("--scales", default="1,4", help="request-rate multipliers")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--setup", choices=("vidur", "sim_speed"), default="vidur")
    parser.add_argument("--out", help="JSON to write")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    try:
        scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        raise SystemExit(f"--scales {args.scales!r}: give numbers separated by commas") from None
    if not all(s > 0 and s != float("inf") for s in scales):
        raise SystemExit(f"--scales {args.scales!r}: every multiplier must be positive and finite")
    out = writable_out(args.out) if args.out else None

    sys.path.insert(0, str(ROOT))
    import policies
    import policies.kvcache as current
    import traces
    from policies import Slo
    from profiler import DatasheetModel, load_model_config
    from twin.latency import load_latency_model
    from twin.sim import EngineConfig, Simulator

    with tempfile.TemporaryDirectory(prefix="kv-pass-") as tmp:
        base = baseline_module(args.baseline, Path(tmp))
    impls = {
        "baseline": {(c, f): getattr(getattr(base, c), f) for c, f in FUNCTIONS},
        "current": {(c, f): getattr(getattr(current, c), f) for c, f in FUNCTIONS},
    }
    clock = time.process_time_ns
    spent: dict[str, int] = {}

    def timed(name, fn):
        def call(*a):
            t = clock()
            out = fn(*a)
            spent[name] = spent.get(name, 0) + clock() - t
            return out

        return call

    if args.setup == "vidur":
        model = DatasheetModel(load_model_config(ROOT / "profiler" / "configs" / "llama-2-7b.json"))
        policy_args = {"max_num_batched_tokens": 4096, "max_num_seqs": 128}
        engine = EngineConfig(num_kv_blocks=6499)
    else:
        model = load_latency_model(load_model_config("llama-3.1-8b"))
        policy_args, engine = {}, EngineConfig()
    try:
        full = traces.load(args.trace)
    except traces.TraceError as err:
        raise SystemExit(f"--trace: {err}") from None
    runs = []
    for scale in scales:
        workload = full.scale_rate(scale) if scale != 1.0 else full
        cpu: dict[tuple[str, str], list[float]] = {}
        iterations: dict[str, set[int]] = {"baseline": set(), "current": set()}
        for i in range(args.repeats):
            order = ("baseline", "current") if i % 2 == 0 else ("current", "baseline")
            for tree in order:
                spent.clear()
                for (cls, fn), impl in impls[tree].items():
                    setattr(getattr(current, cls), fn, timed(fn, impl))
                policy = policies.get("vllm", **policy_args)
                sim = Simulator(workload, policy, model, Slo(), engine)
                # Runs through arrivals take their blocks by count and call these passes
                # rarely: the decisions they time are the ones that end at every arrival.
                sim.runs_through_arrivals = False
                t = clock()
                sim.run()
                cpu.setdefault((tree, "loop"), []).append((clock() - t) / 1e9)
                for _, fn in FUNCTIONS:
                    cpu.setdefault((tree, fn), []).append(spent.get(fn, 0) / 1e9)
                iterations[tree].add(sim.stats.iterations)
        for (cls, fn), impl in impls["current"].items():
            setattr(getattr(current, cls), fn, impl)
        if iterations["baseline"] != iterations["current"]:
            raise SystemExit(f"{scale:g}x: the trees simulate different runs: {iterations}")
        row = {"scale": scale, "iterations": iterations["current"].pop()}
        for name in (*(fn for _, fn in FUNCTIONS), "loop"):
            b, c = min(cpu[("baseline", name)]), min(cpu[("current", name)])
            row[name] = {"baseline_cpu_s": b, "current_cpu_s": c, "current_over_baseline": c / b}
            print(
                f"{scale:g}x {name}: baseline {b:.3f} s, current {c:.3f} s CPU "
                f"(min of {args.repeats}) -> current/baseline {c / b:.3f}"
            )
        runs.append(row)
    if out is not None:
        meta = {
            "trace": Path(args.trace).name,
            "baseline": args.baseline,
            "baseline_commit": git("rev-parse", args.baseline),
            "current_commit": git("rev-parse", "HEAD"),
            "current_tree_clean": not git("status", "--porcelain", "--", "policies"),
            "latency_model": model.label,
            "setup": args.setup,
            "timer": "process_time_ns around each call (its own cost included)",
        }
        out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
        print(f"saved {out}")


if __name__ == "__main__":
    main()
