"""Extract compact bf16 operator tables from an aiconfigurator-core wheel (Apache-2.0).

Usage:  pip download --no-deps aiconfigurator-core==0.12.0 -d DIR
        python -m profiler.tables.extract DIR/aiconfigurator_core-0.12.0-*.whl

Keeps, per GPU and serving stack, the rows twin's dense-model operator model reads: bf16 GEMMs
from the stack's default linear kernel, and bf16 context and generation attention with a bf16
KV cache and no sliding window, from the attention kernel the stack measured most shapes
with. It also keeps the published end-to-end runs of Llama-3.1-8B. The output replaces
``profiler/tables/aiconfigurator/`` entirely, so a new data version is one re-run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import yaml

OUT = Path(__file__).parent / "aiconfigurator"
STACKS = ("vllm", "sglang", "trtllm")
GEMM_COLUMNS = ["m", "n", "k", "latency"]
ATTN_KEYS = ["batch_size", "isl", "step", "num_heads", "num_key_value_heads", "head_dim"]
E2E_MODEL = "Llama-3.1-8B"
NOTICE = """\
The tables in this directory are extracted from aiconfigurator-core {version}
(https://pypi.org/project/aiconfigurator-core/, https://github.com/ai-dynamo/aiconfigurator),
Copyright (c) 2025-2026 NVIDIA CORPORATION & AFFILIATES, licensed under the Apache License,
Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0).

Changes: only bf16 rows are kept (GEMMs of each stack's default linear kernel; context and
generation attention of the most-measured kernel with a bf16 KV cache and no sliding
window), duplicates are reduced to their median, and latencies are stored as float32
milliseconds. e2e_llama31_8b.csv holds the Llama-3.1-8B rows of systems/silicon_sample.csv
run aggregated on one GPU. Regenerate with `python -m profiler.tables.extract <wheel>`.
"""


def current_version(systems: Path, gpu: str, stack: str) -> str:
    slots = yaml.safe_load((systems / "query_versions.yaml").read_text())
    slot = slots.get("overrides", {}).get(gpu, {}).get(stack) or slots["defaults"][stack]
    return str(slot["current"])


def _bf16_attention(path: Path) -> tuple[pd.DataFrame, str]:
    df = pd.read_parquet(path)
    keep = (df.attn_dtype == "bfloat16") & (df.kv_cache_dtype == "bfloat16")
    if "window_size" in df:
        keep &= df.window_size == 0
    df = df[keep]
    kernel = df.kernel_source.value_counts().idxmax()
    df = df[df.kernel_source == kernel]
    out = df[ATTN_KEYS + ["latency"]].groupby(ATTN_KEYS, as_index=False).latency.median()
    return out.astype({"latency": "float32"}), str(kernel)


def _bf16_gemm(path: Path) -> tuple[pd.DataFrame, str]:
    df = pd.read_parquet(path)
    df = df[df.gemm_dtype == "bfloat16"]
    kernel = df.kernel_source.value_counts().idxmax()
    df = df[df.kernel_source == kernel]
    out = df[GEMM_COLUMNS].groupby(["m", "n", "k"], as_index=False).latency.median()
    return out.astype({"latency": "float32"}), str(kernel)


def extract(systems: Path, out: Path, package_version: str) -> dict:
    manifest: dict = {"source": "aiconfigurator-core", "version": package_version, "gpus": {}}
    for gpu_dir in sorted((systems / "data").iterdir()):
        gpu = gpu_dir.name
        for stack in STACKS:
            version = current_version(systems, gpu, stack)
            gemm = gpu_dir / "gemm" / stack / version / "gemm_perf.parquet"
            attn = gpu_dir / "attention" / stack / version
            if not (gemm.is_file() and (attn / "context_attention_perf.parquet").is_file()):
                continue
            device = str(pd.read_parquet(gemm, columns=["device"]).device.iloc[0])
            if not device.startswith("NVIDIA"):
                continue  # twin splits NVIDIA SMs; other vendors' parts have no such lanes
            target = out / gpu / stack
            target.mkdir(parents=True, exist_ok=True)
            g, gk = _bf16_gemm(gemm)
            c, ck = _bf16_attention(attn / "context_attention_perf.parquet")
            d, dk = _bf16_attention(attn / "generation_attention_perf.parquet")
            g.to_parquet(target / "gemm.parquet", index=False, compression="zstd")
            c.drop(columns=["step"]).to_parquet(
                target / "context_attention.parquet", index=False, compression="zstd"
            )
            d.drop(columns=["isl"]).to_parquet(
                target / "generation_attention.parquet", index=False, compression="zstd"
            )
            manifest["gpus"].setdefault(gpu, {})[stack] = {
                "version": version,
                "device": device,
                "kernels": {"gemm": gk, "context_attention": ck, "generation_attention": dk},
                "rows": {
                    "gemm": len(g), "context_attention": len(c), "generation_attention": len(d)
                },
            }
            print(f"{gpu}/{stack} {version}: {len(g)} gemm, {len(c)} ctx, {len(d)} gen rows")
    return manifest


def extract_e2e(systems: Path, out: Path) -> int:
    df = pd.read_csv(systems / "silicon_sample.csv")
    df = df[df.model_path.str.contains(E2E_MODEL, case=False, regex=False)]
    df = df[(df["mode"] == "agg") & (df["tp_size"] == 1) & (df["pp_size"] == 1)]
    keep = ["id", "backend", "backend_version", "model_path", "system", "precision", "isl",
            "osl", "batch_size", "silicon_ttft_ms", "silicon_tpot_ms"]
    df[keep].to_csv(out / "e2e_llama31_8b.csv", index=False)
    return len(df)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="aiconfigurator-core wheel (pip download)")
    args = parser.parse_args(argv)
    if not args.wheel.is_file():
        print(f"{args.wheel}: no such wheel; run pip download --no-deps aiconfigurator-core")
        return 2
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(args.wheel) as whl:
        names = [n for n in whl.namelist() if "/systems/" in n or n.endswith("METADATA")]
        whl.extractall(tmp, members=names)
        systems = Path(tmp) / "aiconfigurator_core" / "systems"
        meta = next(Path(tmp).glob("*.dist-info/METADATA")).read_text()
        version = next(line.split(":", 1)[1].strip() for line in meta.splitlines()
                       if line.startswith("Version:"))
        staging = Path(tmp) / "out"
        manifest = extract(systems, staging, version)
        manifest["e2e_runs"] = extract_e2e(systems, staging)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        (staging / "NOTICE").write_text(NOTICE.format(version=version))
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(staging, OUT)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
