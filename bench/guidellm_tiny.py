"""Drive `twin run --model tiny` with guidellm, unmodified, and save its report.

The check that load generators built for vLLM work against twin as they are: guidellm talks
to the OpenAI API, counts tokens offline with the bundled byte-level tokenizer.json and
sweeps request rates (synchronous, throughput, then constant rates between). The model is
the bundled tiny one with random weights on a CPU, so the figures measure this machine's
CPU and the server's overheads, not a GPU: they are no performance claim about any policy.

    pip install guidellm
    python bench/guidellm_tiny.py --out bench/results/guidellm

writes ``report.json`` (guidellm's own, less its per-request records), ``metrics.txt``
(the server's /metrics after the sweep), ``summary.json`` (per benchmark: rate, TTFT, ITL,
errors) and ``run.json`` (the commands and versions).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_runtime.byte_tokenizer_files import byte_tokenizer_dir  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"twin run exited with code {server.returncode} before serving")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"twin run did not answer {url}/health within {timeout_s:.0f} s")


def relative_paths(path: Path) -> None:
    """Paths in the saved files relative to the repository, so they hold no machine's paths."""
    root = str(Path(__file__).resolve().parent.parent)
    path.write_text(path.read_text().replace(root + "/", "").replace(root, "."))


def summarise(report: dict) -> list[dict]:
    """One row per benchmark of guidellm's report: the figures a sweep is read by."""
    rows = []
    for bench in report["benchmarks"]:
        m = bench["metrics"]
        strategy = bench["config"]["strategy"]
        rate = strategy.get("rate") or strategy.get("streams") or ""
        totals = m["request_totals"]

        def mean(key: str, m: dict = m) -> float:
            return float(m[key]["successful"]["mean"])

        rows.append(
            {
                "strategy": f"{strategy['type_']}{'@' + format(rate, 'g') if rate else ''}",
                "requests_per_s": mean("requests_per_second"),
                "output_tokens_per_s": mean("output_tokens_per_second"),
                "ttft_ms_mean": mean("time_to_first_token_ms"),
                "itl_ms_mean": mean("inter_token_latency_ms"),
                "completed": int(totals["successful"]),
                "errored": int(totals["errored"]),
                "incomplete": int(totals["incomplete"]),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/guidellm"))
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--sweep-size", type=int, default=5, help="benchmarks in guidellm's sweep")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each benchmark")
    ap.add_argument(
        "--max-concurrency", type=int, default=64, help="streams of the throughput benchmark"
    )
    ap.add_argument("--policy", default="vllm")
    args = ap.parse_args()
    guidellm = shutil.which("guidellm")
    if guidellm is None:
        raise SystemExit("guidellm is not installed: pip install guidellm")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = [
        sys.executable, "-m", "twin.commands.cli", "run", "--model", "tiny", "--device", "cpu",
        "--policy", args.policy, "--port", str(port), "--max-queue", "1024",
    ]  # fmt: skip
    load = [
        guidellm, "run",
        "--backend", f"kind=openai_http,target={url}",
        "--profile",
        f"kind=sweep,sweep_size={args.sweep_size},max_concurrency={args.max_concurrency}",
        "--constraint", f"kind=max_duration,seconds={args.seconds:g}",
        "--data", f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},"
        f"output_tokens={args.output_tokens}",
        "--tokenizer", f"kind=huggingface_auto,model={byte_tokenizer_dir()}",
        "--output", f"kind=json,path={args.out / 'report.json'}",
        "--metrics", "kind=generative,sample_size=0",  # statistics only, no prompt texts
        "--disable-console-interactive",
    ]  # fmt: skip
    server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(url, server)
        started = time.time()
        subprocess.run(load, check=True)
        elapsed = time.time() - started
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            (args.out / "metrics.txt").write_text(r.read().decode())
    finally:
        server.terminate()
        server.wait(30)
    run = {
        "what": "guidellm sweep against twin run --model tiny (random weights) on a CPU",
        "latency_model": "none: wall-clock serving on this CPU, nothing modelled",
        "serve": serve[1:],
        "load": ["guidellm", *load[1:]],
        "guidellm": version("guidellm"),
        "twin": version("twin"),
        "sweep_wall_s": round(elapsed, 1),
    }
    (args.out / "run.json").write_text(json.dumps(run, indent=1, default=str) + "\n")
    for name in ("report.json", "run.json"):
        relative_paths(args.out / name)
    report = json.loads((args.out / "report.json").read_text())
    for bench in report["benchmarks"]:
        bench.pop("requests", None)  # per-request records: megabytes, and summarised in metrics
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    rows = summarise(report)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(
        f"{'strategy':<14} {'req/s':>7} {'out tok/s':>10} {'TTFT ms':>9} {'ITL ms':>8} "
        f"{'errors':>7}"
    )
    for r in rows:
        print(
            f"{r['strategy']:<14} {r['requests_per_s']:>7.2f} {r['output_tokens_per_s']:>10.0f} "
            f"{r['ttft_ms_mean']:>9.1f} {r['itl_ms_mean']:>8.2f} {r['errored']:>7}"
        )
    print(f"wrote {args.out / 'report.json'}, metrics.txt and run.json ({elapsed:.0f} s sweep)")


if __name__ == "__main__":
    main()
