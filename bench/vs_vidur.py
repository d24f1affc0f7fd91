"""twin beside Vidur (microsoft/vidur): simulation speed and agreement on the same trace.

Not part of CI. Vidur lives in its own virtual environment (``.bench-venv/vidur``) and is run
as a child process, like twin, so both are timed and measured (peak RSS) the same way.

    # once: install Vidur and give it profiling data from local files (no model hub)
    python bench/vs_vidur.py --setup --vidur-repo PATH/TO/vidur-checkout
    # the benchmark: 1k, 10k and all requests of the trace
    python bench/vs_vidur.py --trace PATH/TO/azure2023_conv.csv
    # several traces and rates in one run, wall and CPU seconds per simulated request
    python bench/vs_vidur.py --cases azure-conv-full@1,azure-conv-full@2,azure-conv-full@4,\
        azure-code-full@1 --sizes all --no-cold --patch-vidur-restart

Both simulators get one CSV: the trace's arrival times and lengths, each request clipped to
Llama-2-7B's 4,096-token context the way Vidur's trace loader clips (prompt shortened). Model
Llama-2-7B on one H100, vLLM-style scheduling with the same sequence and token limits and the
same number of KV blocks. Vidur's MLP (and network) profiles are its own H100 measurements from
its public repository; its attention profile is generated here from twin's latency model, in
the schema of Vidur's attention profiler, because the measured one is not available. See
docs/benchmarks.md for every step and what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child_process import run_child  # noqa: E402  (beside this file)
from out_path import writable_out  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".bench-venv"
VENV = BENCH_DIR / "vidur"
CACHE = BENCH_DIR / "vidur-cache"
WORK = BENCH_DIR / "work"
VIDUR_VERSION = "0.0.26"
MODEL_JSON = ROOT / "profiler" / "configs" / "llama-2-7b.json"
VIDUR_MODEL = "meta-llama/Llama-2-7b-hf"
MAX_SEQ_LEN = 4096  # Llama-2's context; Vidur clips requests to it
COMPUTE_DATASET = "twin-bench/vidur-llama-2-7b-h100"
NETWORK_DATASET = "twin-bench/vidur-h100-dgx"
SNAPSHOT = "0" * 40  # a fixed "commit" for the local model-hub cache entries
REPO_MLP = "data/profiling/compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv"
REPO_NET = (
    "data/profiling/network/h100_dgx/all_reduce.csv",
    "data/profiling/network/h100_dgx/send_recv.csv",
)
PERCENTILES = (50, 90, 99)
TRACE_DATE = "2023-11-16"

# ---------------------------------------------------------------- setup


def setup(vidur_repo: Path, max_batch: int) -> None:
    BENCH_DIR.mkdir(exist_ok=True)
    (BENCH_DIR / ".gitignore").write_text("*\n")  # keep the whole folder out of git
    if not (VENV / "bin" / "python").exists():
        run_logged([sys.executable, "-m", "venv", str(VENV)])
    start = time.perf_counter()
    run_logged([str(VENV / "bin" / "pip"), "install", "-q", f"vidur=={VIDUR_VERSION}"])
    print(f"pip install vidur=={VIDUR_VERSION}: {time.perf_counter() - start:.0f} s")
    write_profiles(vidur_repo, max_batch)


def run_logged(cmd: list[str]) -> None:
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True)


def read_repo_file(repo: Path, path: str) -> bytes:
    """A file from a checkout of microsoft/vidur, or from its bare git directory."""
    if (repo / path).is_file():
        return (repo / path).read_bytes()
    out = subprocess.run(
        ["git", "--git-dir", str(repo), "show", f"HEAD:{path}"], capture_output=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"--vidur-repo {repo}: cannot read {path} ({out.stderr.decode().strip()})")
    return out.stdout


def dataset_dir(kind: str, name: str) -> Path:
    """The snapshot folder huggingface_hub's snapshot_download resolves offline."""
    org, repo = name.split("/")
    base = CACHE / "profiling_data" / kind / f"datasets--{org}--{repo}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(SNAPSHOT)
    snap = base / "snapshots" / SNAPSHOT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def write_profiles(vidur_repo: Path, max_batch: int) -> None:
    compute = dataset_dir("compute", COMPUTE_DATASET)
    (compute / "config.json").write_text(
        json.dumps({"model": VIDUR_MODEL, "device_sku": "h100"}, indent=2) + "\n"
    )
    (compute / "mlp.csv.xz").write_bytes(lzma.compress(read_repo_file(vidur_repo, REPO_MLP)))
    attention = attention_profile(max_batch)
    attention.to_csv(compute / "attention.csv.xz", index=False, compression="xz")
    network = dataset_dir("network", NETWORK_DATASET)
    (network / "config.json").write_text(json.dumps({"sku": "h100_dgx"}, indent=2) + "\n")
    for path in REPO_NET:
        name = Path(path).name + ".xz"
        (network / name).write_bytes(lzma.compress(read_repo_file(vidur_repo, path)))
    print(
        f"profiles: {compute} (mlp from the Vidur repo, attention from twin: {len(attention)} "
        f"rows), {network}"
    )


def vidur_profile_grid(max_seq_len: int, max_batch: int) -> list[tuple[int, int, int, bool]]:
    """(prefill_chunk_size, kv_cache_size, batch_size, is_prefill) as Vidur's attention profiler
    enumerates them (vidur/profiling/utils: get_attention_input_combinations)."""
    chunks = [*range(32, 129, 32), *range(256, 1025, 128), *range(1024, 8 * 1024 + 1, 512)]
    chunks = [c for c in chunks if c <= max_seq_len]
    seq = [
        *range(0, 1025, 32),
        *range(1024, 4 * 1024 + 1, 64),
        *range(4 * 1024, 64 * 1024 + 1, 256),
    ]
    seq = [s for s in seq if s < max_seq_len]
    batches = [b for b in [*range(1, 129), *range(128, 1025, 8)] if b <= max_batch]
    rows = []
    for c in chunks:  # chunked prefills: chunk c on top of 0, c, 2c, ... cached tokens
        rows += [(c, i * c, 1, True) for i in range(max_seq_len // c)]
    rows += [(s, 0, 1, True) for s in seq]  # full prefills
    rows += [(0, k, b, False) for k in seq for b in batches]  # decodes
    valid = []
    for q, k, b, pre in rows:
        ok = (q > 0 and q + k <= max_seq_len) if pre else (k > 0 and k <= max_seq_len)
        if ok:
            valid.append((q, k, b, pre))
    return sorted(set(valid))


def attention_profile(max_batch: int) -> pd.DataFrame:
    """Vidur's attention.csv schema, times (ms per layer) from twin's datasheet latency model.

    A prefill row is one chunk of ``prefill_chunk_size`` new tokens over ``kv_cache_size``
    cached ones; a decode row is ``batch_size`` requests each with ``kv_cache_size`` cached
    tokens, as Vidur's profiler defines them. twin counts the K/V write inside attention, so
    ``attn_kv_cache_save`` is zero (Vidur leaves that op out of its totals anyway).
    """
    from policies.batch import BatchShape
    from profiler import DatasheetModel, load_model_config

    cfg = load_model_config(MODEL_JSON)
    model = DatasheetModel(cfg)
    sms = model.gpu.num_sms
    per_layer_ms = 1e3 / cfg.num_layers
    records = []
    for q, k, b, pre in vidur_profile_grid(MAX_SEQ_LEN, max_batch):
        if pre:
            t = model.op_times(BatchShape.prefill(q, k), sms)["attn_prefill"]
        else:
            t = model.op_times(BatchShape.decode(b, b * (k + 1)), sms)["attn_decode"]
        ms = t * per_layer_ms
        records.append(
            {
                "time_stats.attn_prefill.median": ms if pre else np.nan,
                "time_stats.attn_decode.median": np.nan if pre else ms,
                "time_stats.attn_kv_cache_save.median": 0.0,
                "n_embd": cfg.hidden_size,
                "n_q_head": cfg.num_heads,
                "n_kv_head": cfg.num_kv_heads,
                "block_size": 16,
                "num_tensor_parallel_workers": 1,
                "max_model_len": MAX_SEQ_LEN,
                "batch_size": b,
                "prefill_chunk_size": q,
                "kv_cache_size": k,
                "is_prefill": pre,
                "attention_backend": "twin-datasheet",
            }
        )
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------- the trace


def clip_to_context(prompt: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Requests cut to ``MAX_SEQ_LEN`` tokens in all as Vidur's TraceReplayRequestGenerator
    cuts them (the prompt first): the prompts, the outputs and how many were cut."""
    over = np.clip(prompt + output - MAX_SEQ_LEN, 0, None)
    prompt = np.clip(prompt - over, 1, None)
    output = np.minimum(output, MAX_SEQ_LEN - prompt)
    return prompt, output, int((over > 0).sum())


def prepare_trace(
    spec: str, sizes: list[int | None], rate_scale: float = 1.0, tag: str = "t"
) -> list[tuple[int, Path]]:
    """One CSV per size, read by both simulators: Vidur's trace_replay columns."""
    import traces

    wl = traces.load(spec)
    if rate_scale != 1.0:
        wl = wl.scale_rate(rate_scale)
    prompt, output, clipped = clip_to_context(wl.prompt_tokens, wl.output_tokens)
    frame = pd.DataFrame(
        {
            "Date": TRACE_DATE,
            "Time": wl.arrival_s - wl.arrival_s[0],
            "PromptTokenCount": prompt,
            "CompletionTokenCount": output,
        }
    )
    WORK.mkdir(parents=True, exist_ok=True)
    out = []
    for n in sizes:
        n = len(frame) if n is None else min(n, len(frame))
        if any(m == n for m, _ in out):
            continue
        path = WORK / f"trace_{tag}_{n}_x{rate_scale:g}.csv"
        frame.iloc[:n].to_csv(path, index=False)
        out.append((n, path))
    print(
        f"trace {spec} at {rate_scale:g}x its rate: {len(frame)} requests, {clipped} clipped "
        f"to {MAX_SEQ_LEN} tokens"
    )
    return out


# ---------------------------------------------------------------- child processes


def log_tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace").replace(str(ROOT), ".").splitlines()
    return "\n".join(text[-lines:])


# twin, in a child process (this file with --twin-child)


def twin_child(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    import policies
    import traces
    from policies import Slo
    from profiler import DatasheetModel, load_model_config
    from twin.outputs.metrics import keep_token_times, records_frame, request_tokens, summarize
    from twin.sim import EngineConfig, Simulator

    t_import = time.perf_counter()
    df = pd.read_csv(args.twin_child)
    wl = traces.Workload(
        df["Time"].to_numpy(),
        df["PromptTokenCount"].to_numpy(),
        df["CompletionTokenCount"].to_numpy(),
        name="vs-vidur",
    )
    model = DatasheetModel(load_model_config(MODEL_JSON))
    policy = policies.get(
        "vllm", max_num_batched_tokens=args.max_tokens, max_num_seqs=args.max_num_seqs
    )
    t_setup = time.perf_counter()
    c_setup = time.process_time()
    sim = Simulator(wl, policy, model, Slo(), EngineConfig(num_kv_blocks=args.kv_blocks))
    # What ``twin simulate`` writes by default (token times for runs up to 100k requests),
    # and as it does, from the token log rather than from per-request lists.
    kept = keep_token_times(None, len(wl))
    sim.keep_token_times = False
    result = sim.run()
    t_run = time.perf_counter()
    tokens = request_tokens(result.requests, sim.tokens)
    records = records_frame(result.requests, tokens, token_times=kept)
    summary = summarize(records, Slo(), tokens)
    t_end = time.perf_counter()
    c_end = time.process_time()
    out = {
        "simulate_cpu_s": c_end - c_setup,
        "import_s": t_import - t_start,
        "setup_s": t_setup - t_import,
        "simulate_s": t_end - t_setup,
        "loop_s": t_run - t_setup,
        "metrics_s": t_end - t_run,
        "iterations": int(len(result.iterations["start_s"])),
        "events": getattr(sim, "events", None) or len(sim._iters),
        "summary": summary,
        "metrics": {
            **{
                f"{m}_p{p}_s": summary[f"{m}_p{p}_s"]
                for m in ("ttft", "tbt", "e2e")
                for p in PERCENTILES
            },
            "throughput_rps": summary["throughput_rps"],
            "output_tokens_per_s": summary["output_tokens_per_s"],
            "finished": summary["finished"],
            "rejected": summary["rejected"],
            "preemptions": summary["preemptions"],
        },
    }
    Path(args.child_out).write_text(json.dumps(out, default=float))


def run_twin(n: int, trace: Path, args: argparse.Namespace, kv_blocks: int, tag: str) -> dict:
    out = WORK / f"twin_{n}_{tag}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--twin-child",
        str(trace),
        "--child-out",
        str(out),
        "--max-num-seqs",
        str(args.max_num_seqs),
        "--max-tokens",
        str(args.max_tokens),
        "--kv-blocks",
        str(kv_blocks),
    ]
    log = WORK / f"twin_{n}_{tag}.log"
    proc = run_child(cmd, log, args.timeout, dict(os.environ), ROOT)
    if proc["returncode"] != 0 or not out.exists():
        return {**proc, "ok": False, "error": log_tail(log)}
    res = json.loads(out.read_text())
    res.pop("summary")
    return {**proc, **res, "ok": True, "startup_s": proc["process_wall_s"] - res["simulate_s"]}


# Vidur, in its own venv: vidur.main's three lines, timed phase by phase.
VIDUR_DRIVER = r"""
import json, os, sys, time
t0 = time.perf_counter()
c0 = time.process_time()
from vidur.config import SimulationConfig
from vidur.simulator import Simulator
from vidur.utils.random import set_seeds
import vidur.scheduler.global_scheduler.base_global_scheduler as gs
t_import = time.perf_counter()
phase = {"predictor_s": 0.0, "predictor_cpu_s": 0.0, "write_output_s": 0.0}
_get = gs.ExecutionTimePredictorRegistry.get
def timed_get(*a, **k):
    s = time.perf_counter()
    c = time.process_time()
    try:
        return _get(*a, **k)
    finally:
        phase["predictor_s"] += time.perf_counter() - s
        phase["predictor_cpu_s"] += time.process_time() - c
gs.ExecutionTimePredictorRegistry.get = timed_get
_write = Simulator._write_output
def timed_write(self):
    s = time.perf_counter()
    try:
        return _write(self)
    finally:
        phase["write_output_s"] += time.perf_counter() - s
Simulator._write_output = timed_write
if os.environ.get("VS_VIDUR_PATCH_RESTART"):
    # Vidur 0.0.26's Request.restart (recompute after preemption) leaves the per-stage token
    # count as it was, so the restarted request trips an assertion at its next batch end.
    from vidur.entities.request import Request
    _restart = Request.restart
    def patched_restart(self):
        _restart(self)
        self._num_stage_processed_tokens = 0
        self._is_prefill_stage_complete = False
    Request.restart = patched_restart
config = SimulationConfig.create_from_cli_args()
set_seeds(config.seed)
t_config = time.perf_counter()
c_config = time.process_time()
sim = Simulator(config)
t_init = time.perf_counter()
c_init = time.process_time()
sim.run()
t_end = time.perf_counter()
c_end = time.process_time()
json.dump({"init_cpu_s": c_init - c_config, "run_cpu_s": c_end - c_init,
           "process_cpu_before_run_s": c_init - c0,
           "import_s": t_import - t0, "config_s": t_config - t_import,
           "init_s": t_init - t_config, "run_s": t_end - t_init,
           "output_dir": config.metrics_config.output_dir, **phase},
          open(os.environ["VS_VIDUR_OUT"], "w"))
"""


def vidur_flags(
    trace: Path, n: int, args: argparse.Namespace, scheduler: str, kv_blocks: int, out_dir: Path
) -> list[str]:
    rf = "--random_forrest_execution_time_predictor_config_"
    flags = [
        "--replica_config_model_name",
        VIDUR_MODEL,
        "--replica_config_device",
        "h100",
        "--replica_config_network_device",
        "h100_dgx",
        "--replica_config_tensor_parallel_size",
        "1",
        "--replica_config_num_pipeline_stages",
        "1",
        "--cluster_config_num_replicas",
        "1",
        "--cache_config_num_blocks",
        str(kv_blocks),
        "--global_scheduler_config_type",
        "round_robin",
        "--replica_scheduler_config_type",
        scheduler,
        "--request_generator_config_type",
        "trace_replay",
        "--trace_request_generator_config_trace_file",
        str(trace),
        "--trace_request_generator_config_date",
        TRACE_DATE,
        "--trace_request_generator_config_max_tokens",
        str(MAX_SEQ_LEN),
        "--trace_request_generator_config_prefill_scale_factor",
        "1",
        "--trace_request_generator_config_decode_scale_factor",
        "1",
        "--trace_request_generator_config_time_scale_factor",
        "1",
        "--execution_time_predictor_config_type",
        "random_forrest",
        f"{rf}model_profiling_dataset",
        COMPUTE_DATASET,
        f"{rf}network_profiling_dataset",
        NETWORK_DATASET,
        f"{rf}cache_dir",
        str(CACHE),
        f"{rf}prediction_max_batch_size",
        str(args.max_num_seqs),
        f"{rf}prediction_max_tokens_per_request",
        str(MAX_SEQ_LEN),
        f"{rf}prediction_max_prefill_chunk_size",
        str(args.max_tokens),
        f"{rf}num_estimators",
        *map(str, args.rf_estimators),
        f"{rf}max_depth",
        *map(str, args.rf_depth),
        f"{rf}min_samples_split",
        "2",
        f"{rf}k_fold_cv_splits",
        str(args.rf_cv),
        "--metrics_config_output_dir",
        str(out_dir),
        "--no-metrics_config_store_plots",
        "--no-metrics_config_enable_chrome_trace",
        "--metrics_config_store_token_completion_metrics",
    ]
    if scheduler == "vllm":
        flags += [
            "--vllm_scheduler_config_batch_size_cap",
            str(args.max_num_seqs),
            "--vllm_scheduler_config_max_tokens_in_batch",
            str(args.max_tokens),
        ]
    elif scheduler == "sarathi":
        flags += [
            "--sarathi_scheduler_config_batch_size_cap",
            str(args.max_num_seqs),
            "--sarathi_scheduler_config_chunk_size",
            str(args.max_tokens),
        ]
    else:
        raise SystemExit(f"unsupported Vidur scheduler {scheduler!r}; use vllm or sarathi")
    return flags


def clear_vidur_models() -> None:
    """Forget Vidur's trained models and cached predictions: the next run starts cold."""
    for sub in ("predictors", "predictions", "training_predictions", "hf_predictions"):
        shutil.rmtree(CACHE / sub, ignore_errors=True)
    for lock in CACHE.glob("*.file"):
        lock.unlink()


def run_vidur(
    n: int, trace: Path, args: argparse.Namespace, scheduler: str, kv_blocks: int, tag: str
) -> dict:
    run_dir = WORK / f"vidur_{scheduler}_{n}_{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    out = run_dir / "timings.json"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "WANDB_MODE": "disabled",
        "VS_VIDUR_OUT": str(out),
    }
    if args.patch_vidur_restart:
        env["VS_VIDUR_PATCH_RESTART"] = "1"
    env.pop("VIRTUAL_ENV", None)
    cmd = [
        str(VENV / "bin" / "python"),
        "-c",
        VIDUR_DRIVER,
        *vidur_flags(trace, n, args, scheduler, kv_blocks, run_dir / "out"),
    ]
    log = run_dir / "vidur.log"
    proc = run_child(cmd, log, args.timeout, env, run_dir)
    if proc["returncode"] != 0 or not out.exists():
        why = "timed out" if proc["timed_out"] else f"exit {proc['returncode']}"
        return {**proc, "ok": False, "error": f"{why}: {log_tail(log)}"}
    t = json.loads(out.read_text())
    simulate = t["init_s"] - t["predictor_s"] + t["run_s"]
    res = {
        **proc,
        **t,
        "ok": True,
        "simulate_s": simulate,
        "simulate_cpu_s": t["init_cpu_s"] - t["predictor_cpu_s"] + t["run_cpu_s"],
        "loop_s": simulate - t["write_output_s"],
        "metrics_s": t["write_output_s"],
        "startup_s": proc["process_wall_s"] - simulate,
        "metrics": vidur_metrics(Path(t["output_dir"]), trace),
    }
    if not args.keep_vidur_output:
        shutil.rmtree(t["output_dir"], ignore_errors=True)
    res.pop("output_dir")  # a machine path; not for the saved results
    return res


def vidur_metrics(out_dir: Path, trace: Path) -> dict:
    req = pd.read_csv(out_dir / "request_metrics.csv")
    arrivals = pd.read_csv(trace)
    n = len(arrivals)
    m: dict = {}
    for name, col in (("ttft", "prefill_e2e_time"), ("e2e", "request_e2e_time")):
        qs = np.percentile(req[col].dropna().to_numpy(), PERCENTILES)
        m.update({f"{name}_p{p}_s": float(q) for p, q in zip(PERCENTILES, qs, strict=True)})
    tbt = pd.read_csv(out_dir / "plots" / "decode_token_execution_plus_preemption_time.csv")
    for p in PERCENTILES:  # a DDSketch (0.1% relative accuracy) read at 1% steps
        row = tbt.iloc[(tbt["cdf"] - p / 100).abs().argmin()]
        m[f"tbt_p{p}_s"] = float(row["decode_token_execution_plus_preemption_time"])
    # Request ids follow the trace order; a request finishes at arrival + e2e.
    req = req.sort_values("Request Id")
    finish = (
        arrivals["Time"].to_numpy()[req["Request Id"].to_numpy()]
        + req["request_e2e_time"].to_numpy()
    )
    span = float(finish.max() - arrivals["Time"].min())
    out_tokens = arrivals["CompletionTokenCount"].to_numpy()[req["Request Id"].to_numpy()]
    m.update(
        {
            "throughput_rps": len(req) / span,
            "output_tokens_per_s": float(out_tokens.sum()) / span,
            "finished": int(len(req)),
            "rejected": int(n - len(req)),
            "preemptions": int(req["request_num_restarts"].sum()),
        }
    )
    return m


# ---------------------------------------------------------------- per-iteration predictions


def iteration_table(max_num_seqs: int) -> list[dict]:
    """One forward pass as each latency model sees it: twin's predict vs Vidur's lookup tables.

    Vidur's time is its ExecutionTime sum (vidur/entities/execution_time.py) over the
    prediction tables its trained forests wrote to the cache, for TP=1, PP=1, 32 layers.
    """
    from policies.batch import BatchShape
    from profiler import DatasheetModel, load_model_config

    tables = vidur_prediction_tables(max_num_seqs)
    if tables is None:
        return []
    cfg = load_model_config(MODEL_JSON)
    model = DatasheetModel(cfg)
    rows = []
    cases = [("decode", b, 1024) for b in (1, 32, max_num_seqs)]
    cases += [("prefill", p, 0) for p in (256, 1024, 2048, 4000)]
    for kind, size, ctx in cases:
        if kind == "decode":
            shape = BatchShape.decode(size, size * (ctx + 1))
            q_tokens, kv_tokens = [1] * size, [ctx + 1] * size
            label = f"decode, {size} requests at {ctx} tokens of context"
        else:
            shape = BatchShape.prefill(size)
            q_tokens, kv_tokens = [size], [size]
            label = f"prefill of one {size}-token prompt"
        ops = model.op_times(shape, model.gpu.num_sms)
        twin_ms = model.predict(shape, model.gpu.num_sms) * 1e3
        vid = vidur_iteration_ms(tables, q_tokens, kv_tokens, cfg.num_layers)
        rows.append(
            {
                "batch": label,
                "twin_ms": twin_ms,
                "twin_attention_ms": (ops["attn_prefill"] + ops["attn_decode"]) * 1e3,
                "twin_overhead_and_lm_head_ms": twin_ms
                - sum(ops.values()) * 1e3
                + lm_head_ms(model, shape),
                "vidur_ms": vid["total"],
                "vidur_attention_ms": vid["attention"],
            }
        )
    return rows


def lm_head_ms(model, shape) -> float:
    """twin's lm_head share of the gemm term (memory-bound: weight bytes over bandwidth)."""
    c = model.costs
    if not shape.sampled:
        return 0.0
    rate, bw = model.curves("gemm", model.gpu.num_sms)
    return (
        max(
            c.head_flops_per_row * shape.sampled / rate,
            (c.head_weight_bytes + c.head_act_bytes_per_row * shape.sampled) / bw,
        )
        * 1e3
    )


def vidur_prediction_tables(max_num_seqs: int) -> dict | None:
    pred = CACHE / "predictions"
    if not pred.is_dir():
        return None
    for folder in sorted(pred.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        dec = folder / "attn_decode.csv.xz"
        if not dec.exists():
            continue
        if pd.read_csv(dec)["X_0"].max() != max_num_seqs:
            continue
        tables = {}
        for f in folder.glob("*.csv.xz"):
            df = pd.read_csv(f)
            keys = [c for c in df.columns if c.startswith("X_")]
            tables[f.name.split(".")[0]] = {
                tuple(int(v) for v in k): p
                for k, p in zip(df[keys].itertuples(index=False), df["prediction"], strict=True)
            }
        return tables
    return None


def vidur_iteration_ms(tables: dict, q: list[int], kv: list[int], layers: int) -> dict:
    total_q = sum(q)
    r = ((total_q + 7) // 8 * 8,)
    per_layer = sum(
        tables[op][r]
        for op in (
            "attn_pre_proj",
            "attn_post_proj",
            "attn_rope",
            "input_layernorm",
            "mlp_up_proj",
            "mlp_down_proj",
            "mlp_act",
            "post_attention_layernorm",
            "add",
        )
    )
    g = 256
    decode_kv = [k for qq, k in zip(q, kv, strict=True) if qq == 1]
    attn = 0.0
    if decode_kv:
        avg = int(np.mean(decode_kv))
        attn += tables["attn_decode"][(len(decode_kv), (avg + g - 1) // g * g)]
    for qq, k in zip(q, kv, strict=True):
        if qq != 1:
            attn += tables["attn_prefill"][((k + g - 1) // g * g, (qq + 31) // 32 * 32)]
    return {"total": (per_layer + attn) * layers, "attention": attn * layers}


# ---------------------------------------------------------------- the benchmark


def parse_cases(text: str) -> list[tuple[str, float]]:
    """``TRACE@SCALE,TRACE@SCALE,...`` as (trace, rate scale) pairs."""
    cases = []
    for item in filter(None, (c.strip() for c in text.split(","))):
        trace, sep, scale = item.rpartition("@")
        try:
            value = float(scale) if sep and trace else float("nan")
        except ValueError:
            value = float("nan")
        if not (value > 0 and math.isfinite(value)):
            raise SystemExit(
                f"--cases {item!r}: write TRACE@SCALE with a positive, finite rate scale, "
                "e.g. azure-conv-full@2"
            )
        cases.append((trace, value))
    if not cases:
        raise SystemExit("--cases: give at least one TRACE@SCALE, e.g. azure-conv-full@1")
    return cases


def benchmark(args: argparse.Namespace) -> None:
    if not (VENV / "bin" / "python").exists() or not (CACHE / "profiling_data").is_dir():
        raise SystemExit(
            "Vidur is not set up: run  python bench/vs_vidur.py --setup "
            "--vidur-repo PATH/TO/vidur  first"
        )
    from profiler import DatasheetModel, load_model_config
    from twin.sim import EngineConfig

    kv_blocks = args.kv_blocks or EngineConfig().kv_blocks(
        DatasheetModel(load_model_config(MODEL_JSON))
    )
    sizes = [None if s == "all" else int(s) for s in args.sizes.split(",")]
    cases = parse_cases(args.cases) if args.cases else [(args.trace, args.rate_scale)]
    schedulers = [s for s in args.vidur_schedulers.split(",") if s]
    load_start = os.getloadavg()
    commit = twin_commit()  # before the runs: what they simulated, whatever is committed meanwhile
    cold: dict = {}
    done = []
    for i, (spec, scale) in enumerate(cases):
        traces_ = prepare_trace(spec, sizes, scale, tag=f"c{i}")
        if i == 0 and schedulers and not args.no_cold:
            n0, t0 = traces_[0]
            clear_vidur_models()
            print(f"vidur-{schedulers[0]} cold start (training) on {n0} requests ...", flush=True)
            cold = run_vidur(n0, t0, args, schedulers[0], kv_blocks, "cold")
            cold["requests"] = n0
            cold["scheduler"] = schedulers[0]
            report("vidur cold", n0, cold)
        results = run_case(traces_, args, schedulers, kv_blocks, f"c{i}")
        add_ratios(results, schedulers, cold if i == 0 else {})
        done.append({"trace": Path(spec).name, "rate_scale": scale, "results": results})
    meta = {
        "date": date.today().isoformat(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15_start": load_start,
        "loadavg_1_5_15_end": os.getloadavg(),
        "trace": done[0]["trace"],
        "rate_scale": done[0]["rate_scale"],
        "twin_commit": commit,
        "vidur_packages": vidur_versions(),
        "model": "Llama-2-7B (profiler/configs/llama-2-7b.json; Vidur meta-llama/Llama-2-7b-hf)",
        "gpu": "H100 (twin: datasheet roofline; Vidur: H100 MLP profile + generated attention)",
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_tokens,
        "kv_blocks": kv_blocks,
        "block_size": 16,
        "max_seq_len": MAX_SEQ_LEN,
        "vidur_version": VIDUR_VERSION,
        "vidur_random_forest": {
            "num_estimators": args.rf_estimators,
            "max_depth": args.rf_depth,
            "min_samples_split": [2],
            "k_fold_cv_splits": args.rf_cv,
        },
        "twin_repeats": args.repeats,
        "vidur_repeats": args.vidur_repeats,
        "vidur_restart_patched": args.patch_vidur_restart,
    }
    payload: dict = {"meta": meta, "vidur_cold_start": cold}
    if args.cases:
        payload["cases"] = [
            {
                **c,
                "results": {k: {str(n): v for n, v in d.items()} for k, d in c["results"].items()},
            }
            for c in done
        ]
    else:
        payload["results"] = {
            k: {str(n): v for n, v in d.items()} for k, d in done[0]["results"].items()
        }
    payload["iteration_predictions_ms"] = iteration_table(args.max_num_seqs)
    out = writable_out(args.out)
    out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"saved {out}")
    if args.cases:
        print(cases_markdown(payload))
        return
    plot(payload, out.with_suffix(".png"))
    print(markdown(payload))


def run_case(
    traces_: list[tuple[int, Path]],
    args: argparse.Namespace,
    schedulers: list[str],
    kv_blocks: int,
    tag: str,
) -> dict:
    results: dict = {"twin": {}, **{f"vidur-{s}": {} for s in schedulers}}
    for n, trace in traces_:
        runs = [run_twin(n, trace, args, kv_blocks, f"{tag}r{i}") for i in range(args.repeats)]
        results["twin"][n] = summarize_runs(n, runs)
        report("twin", n, results["twin"][n])
        for s in schedulers:
            runs = [
                run_vidur(n, trace, args, s, kv_blocks, f"{tag}r{i}")
                for i in range(args.vidur_repeats)
            ]
            results[f"vidur-{s}"][n] = summarize_runs(n, runs)
            report(f"vidur-{s}", n, results[f"vidur-{s}"][n])
    return results


def add_ratios(results: dict, schedulers: list[str], cold: dict) -> None:
    """Vidur over twin, per simulated request (both ran the same requests), wall and CPU."""
    for s in schedulers:
        for n, row in results[f"vidur-{s}"].items():
            tw = results["twin"][n]
            if not (row.get("ok") and tw.get("ok")):
                continue
            row["speedup_simulate"] = row["simulate_s"] / tw["simulate_s"]
            row["speedup_simulate_cpu"] = row["simulate_cpu_s"] / tw["simulate_cpu_s"]
            row["speedup_process"] = row["process_wall_s"] / tw["process_wall_s"]
            row["speedup_process_cpu"] = row["cpu_s"] / tw["cpu_s"]
            if cold.get("ok"):
                extra = cold["process_wall_s"] - cold_warm_wall(cold, results, s)
                row["speedup_process_cold"] = (row["process_wall_s"] + extra) / tw["process_wall_s"]


def twin_commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return head.stdout.strip() + (" with uncommitted edits" if dirty else "")


VERSIONS_CODE = r"""
import importlib.metadata as m, json, platform, re
names = ["vidur"] + [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in m.requires("vidur") or []]
out = {"python": platform.python_version()}
for name in names:
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""


def vidur_versions() -> dict:
    """Vidur's version and its direct dependencies', as installed in its environment."""
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", VERSIONS_CODE],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout)


def cold_warm_wall(cold: dict, results: dict, scheduler: str) -> float:
    """The warm process wall of the cold run's size, to isolate what training added."""
    row = results[f"vidur-{scheduler}"].get(cold["requests"], {})
    return (
        row.get("process_wall_s", cold["process_wall_s"])
        if row.get("ok")
        else cold["process_wall_s"]
    )


def summarize_runs(n: int, runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("ok")]
    if not ok:
        return {"requests": n, "ok": False, "error": runs[0].get("error", "")}
    med = {
        k: statistics.median(r[k] for r in ok)
        for k in (
            "process_wall_s",
            "simulate_s",
            "loop_s",
            "metrics_s",
            "startup_s",
            "peak_rss_mb",
            "cpu_s",
            "simulate_cpu_s",
        )
    }
    row = {
        "requests": n,
        "ok": True,
        "repeats": len(ok),
        "failed": len(runs) - len(ok),
        **med,
        "simulate_walls_s": [r["simulate_s"] for r in ok],
        "process_walls_s": [r["process_wall_s"] for r in ok],
        "requests_per_s_simulate": n / med["simulate_s"],
        "requests_per_s_process": n / med["process_wall_s"],
        "simulate_us_per_request": med["simulate_s"] / n * 1e6,
        "simulate_cpu_us_per_request": med["simulate_cpu_s"] / n * 1e6,
        "process_cpu_us_per_request": med["cpu_s"] / n * 1e6,
        "metrics": ok[0]["metrics"],
    }
    for k in ("iterations", "events", "predictor_s", "import_s", "write_output_s", "run_s"):
        if k in ok[0]:
            row[k] = statistics.median(r[k] for r in ok)
    return row


def report(name: str, n: int, row: dict) -> None:
    if not row.get("ok"):
        print(f"{name:14s} {n:6d} requests: FAILED {row.get('error', '')[-800:]}", flush=True)
        return
    m = row["metrics"]
    print(
        f"{name:14s} {n:6d} requests: simulate {row['simulate_s']:8.2f} s, process "
        f"{row['process_wall_s']:8.2f} s, {n / row['simulate_s']:9.0f} req/s, peak "
        f"{row['peak_rss_mb']:6.0f} MB | TTFT p50 {m['ttft_p50_s']:.3f} p99 "
        f"{m['ttft_p99_s']:.3f} TBT p50 {m['tbt_p50_s'] * 1e3:.1f} ms E2E p50 "
        f"{m['e2e_p50_s']:.2f} s",
        flush=True,
    )


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- output


def markdown(payload: dict) -> str:
    res = payload["results"]
    lines = [
        "| simulator | requests | simulate s | of which metrics s | process s | req/s (simulate) "
        "| peak RSS MB | Vidur/twin simulate | Vidur/twin process | Vidur/twin process, cold |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in res.items():
        for n, r in rows.items():
            if not r.get("ok"):
                lines.append(f"| {name} | {n} | failed | | | | | | | |")
                continue
            sp = f"{r['speedup_simulate']:.1f}x" if "speedup_simulate" in r else ""
            pp = f"{r['speedup_process']:.1f}x" if "speedup_process" in r else ""
            pc = f"{r['speedup_process_cold']:.1f}x" if "speedup_process_cold" in r else ""
            lines.append(
                f"| {name} | {int(n):,} | {r['simulate_s']:.2f} | {r['metrics_s']:.2f} | "
                f"{r['process_wall_s']:.2f} | "
                f"{r['requests_per_s_simulate']:,.0f} | {r['peak_rss_mb']:.0f} | {sp} | {pp} "
                f"| {pc} |"
            )
    cold = payload.get("vidur_cold_start") or {}
    if cold.get("ok"):
        lines.append("")
        lines.append(
            f"Vidur cold start ({cold['requests']:,} requests, {cold['scheduler']}): process "
            f"{cold['process_wall_s']:.1f} s, of which predictor training "
            f"{cold['predictor_s']:.1f} s; peak RSS {cold['peak_rss_mb']:.0f} MB."
        )
    lines += ["", "| metric | " + " | ".join(res) + " |", "|---|" + "---:|" * len(res)]
    biggest = {name: rows[max(rows, key=int)] for name, rows in res.items() if rows}
    keys = [f"{m}_p{p}_s" for m in ("ttft", "tbt", "e2e") for p in PERCENTILES]
    for k in [*keys, "throughput_rps", "output_tokens_per_s", "preemptions"]:
        cells = []
        for r in biggest.values():
            v = r.get("metrics", {}).get(k) if r.get("ok") else None
            if v is None:
                cells.append("")
            elif k.startswith("tbt"):
                cells.append(f"{v * 1e3:.1f} ms")
            elif k.endswith("_p50_s") or k.endswith("_p90_s") or k.endswith("_p99_s"):
                cells.append(f"{v:.3f} s")
            elif k == "preemptions":
                cells.append(f"{int(v)}")
            else:
                cells.append(f"{v:.2f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    it = payload.get("iteration_predictions_ms") or []
    if it:
        lines += [
            "",
            "| one forward pass | twin ms | twin attention ms | Vidur ms | Vidur attention ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in it:
            lines.append(
                f"| {r['batch']} | {r['twin_ms']:.2f} | {r['twin_attention_ms']:.2f} | "
                f"{r['vidur_ms']:.2f} | {r['vidur_attention_ms']:.2f} |"
            )
    return "\n".join(lines)


def cases_markdown(payload: dict) -> str:
    """One row per (case, Vidur scheduler): per-request cost of each and Vidur over twin."""
    lines = [
        "| trace | rate | requests | twin simulate s (CPU s) | Vidur simulate s (CPU s) "
        "| twin µs/request wall (CPU) | Vidur µs/request wall (CPU) | Vidur/twin wall | "
        "Vidur/twin CPU | twin events / iterations |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in payload["cases"]:
        res = case["results"]
        for name, rows in res.items():
            if name == "twin":
                continue
            for n, r in rows.items():
                tw = res["twin"].get(n, {})
                head = f"| {case['trace']} ({name}) | {case['rate_scale']:g}x | {int(n):,} |"
                if not (r.get("ok") and tw.get("ok")):
                    why = "twin failed" if not tw.get("ok") else f"{name} failed"
                    lines.append(f"{head} {why} | | | | | | |")
                    continue
                lines.append(
                    f"{head} {tw['simulate_s']:.2f} ({tw['simulate_cpu_s']:.2f}) | "
                    f"{r['simulate_s']:.2f} ({r['simulate_cpu_s']:.2f}) | "
                    f"{tw['simulate_us_per_request']:,.0f} "
                    f"({tw['simulate_cpu_us_per_request']:,.0f}) | "
                    f"{r['simulate_us_per_request']:,.0f} "
                    f"({r['simulate_cpu_us_per_request']:,.0f}) | "
                    f"{r['speedup_simulate']:.1f}x | {r['speedup_simulate_cpu']:.1f}x | "
                    f"{tw.get('events', 0):,.0f} / {tw.get('iterations', 0):,.0f} |"
                )
    return "\n".join(lines)


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = payload["results"]
    names = list(res)
    colors = {"twin": "#1f77b4", "vidur-vllm": "#d62728", "vidur-sarathi": "#ff7f0e"}
    sizes = sorted({int(n) for rows in res.values() for n in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(sizes))
    for i, name in enumerate(names):
        sim, proc = [], []
        for n in sizes:
            r = res[name].get(str(n), {})
            sim.append(r["simulate_s"] if r.get("ok") else np.nan)
            proc.append(r["process_wall_s"] if r.get("ok") else np.nan)
        c = colors.get(name, None)
        ax1.bar(x + i * width, proc, width, color=c, alpha=0.35, label=f"{name}: whole process")
        ax1.bar(x + i * width, sim, width, color=c, label=f"{name}: simulation only")
        if name != "twin":
            for j, n in enumerate(sizes):
                r = res[name].get(str(n), {})
                if "speedup_simulate" in r:
                    ax1.annotate(
                        f"{r['speedup_simulate']:.1f}x",
                        (x[j] + i * width, proc[j]),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
    ax1.set_xticks(x + width * (len(names) - 1) / 2, [f"{n:,} requests" for n in sizes])
    ax1.set_yscale("log")
    walls = [r["simulate_s"] for rows in res.values() for r in rows.values() if r.get("ok")]
    if walls:
        ax1.set_ylim(bottom=min(walls) / 3)
    ax1.set_ylabel("wall time (s, log)")
    ax1.set_title("Speed (warm Vidur; medians; labels: Vidur/twin simulation time)")
    ax1.legend(fontsize=7)
    keys = [f"{m}_p{p}_s" for m in ("ttft", "tbt", "e2e") for p in PERCENTILES]
    x2 = np.arange(len(keys))
    for i, name in enumerate(names):
        rows = res[name]
        if not rows:
            continue
        r = rows[str(max(int(n) for n in rows))]
        vals = [r["metrics"][k] if r.get("ok") else np.nan for k in keys]
        ax2.bar(x2 + i * width, vals, width, color=colors.get(name), label=name)
    ax2.set_xticks(
        x2 + width * (len(names) - 1) / 2,
        [k.replace("_s", "").replace("_", " ") for k in keys],
        rotation=45,
    )
    ax2.set_yscale("log")
    ax2.set_ylabel("seconds (log)")
    biggest = max(sizes) if sizes else 0
    ax2.set_title(f"Predicted latency percentiles, {biggest:,} requests")
    ax2.legend(fontsize=8)
    meta = payload["meta"]
    fig.suptitle(
        f"twin vs Vidur {VIDUR_VERSION}: Llama-2-7B, one H100, {meta['trace']} at "
        f"{meta.get('rate_scale', 1):g}x its request rate"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"saved {path}")


# ---------------------------------------------------------------- entry point


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--setup",
        action="store_true",
        help="install Vidur in .bench-venv/vidur and write its profiling data",
    )
    p.add_argument(
        "--vidur-repo",
        type=Path,
        help="with --setup: a checkout (or bare git dir) of github.com/microsoft/vidur",
    )
    p.add_argument(
        "--trace",
        default="azure-conv",
        help="trace name or path (the full azure2023_conv.csv for the headline)",
    )
    p.add_argument("--sizes", default="1000,10000,all", help="first N requests; 'all' = whole")
    p.add_argument(
        "--cases",
        help="several traces and rates in one run, TRACE@SCALE comma list (replaces --trace "
        "and --rate-scale), e.g. azure-conv-full@1,azure-conv-full@2,azure-code-full@1",
    )
    p.add_argument(
        "--rate-scale",
        type=float,
        default=1.0,
        help="multiply the trace's request rate (arrival times divided by it)",
    )
    p.add_argument("--repeats", type=int, default=3, help="twin runs per size")
    p.add_argument("--vidur-repeats", type=int, default=1, help="Vidur runs per size")
    p.add_argument(
        "--vidur-schedulers",
        default="vllm",
        help="comma list of Vidur replica schedulers: vllm, sarathi",
    )
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch")
    p.add_argument(
        "--kv-blocks",
        type=int,
        default=0,
        help="KV blocks of 16 tokens for both (default: twin's H100 budget)",
    )
    p.add_argument("--rf-estimators", type=int, nargs="+", default=[32])
    p.add_argument("--rf-depth", type=int, nargs="+", default=[16])
    p.add_argument("--rf-cv", type=int, default=2, help="Vidur's k-fold CV splits (min 2)")
    p.add_argument(
        "--patch-vidur-restart",
        action="store_true",
        help="fix Vidur 0.0.26's Request.restart in memory so runs with preemption finish",
    )
    p.add_argument("--no-cold", action="store_true", help="skip the cold (training) Vidur run")
    p.add_argument("--timeout", type=float, default=600, help="seconds per child process")
    p.add_argument("--keep-vidur-output", action="store_true")
    p.add_argument("--out", default="bench/results/vs_vidur.json")
    p.add_argument("--twin-child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.twin_child:
        twin_child(args)
        return
    if args.setup:
        if args.vidur_repo is None:
            raise SystemExit(
                "--setup needs --vidur-repo: a checkout of github.com/microsoft/vidur "
                "(its data/profiling files are read from there)"
            )
        setup(args.vidur_repo, max(256, args.max_num_seqs))
        return
    writable_out(args.out)  # before the runs, not after them
    benchmark(args)


if __name__ == "__main__":
    main()
