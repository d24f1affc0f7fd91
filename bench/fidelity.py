"""How close the measured-table latency model comes to the measurements, on points it never saw.

For every GPU and stack with tables, per operator class at all SMs:
  * GEMMs: every other measured M (wave-boundary pairs held out together), N and K value
    is held out; the rest predicts it (interpolation in M, N, K as the model does);
  * prefill (context) and decode (generation) attention: every other measured length and
    batch is held out, for every head shape;
  * the datasheet roofline's per-operator prediction beside it, on the same points;
  * whole prefill and decode iterations of a Llama-like model whose GEMM shapes the data
    holds (hidden 4096, 32/8 heads of 128, FFN 8192, vocab 65536), each predicted with its
    own M and length left out, against the sum of the measured operators of that iteration;
  * the spread between stacks: Llama-3.1-8B operator times per stack on the same GPU;
  * end to end: the published closed-loop runs of Llama-3.1-8B the data holds (bf16, one
    GPU), replayed with ``--concurrency``, TTFT and TPOT against the published ones.
Writes bench/results/fidelity.json and plots under docs/img/.

    python bench/fidelity.py [--gpus h100,h200] [--e2e-only]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from policies.batch import BatchShape
from profiler.config import load_model_config
from profiler.datasheet import DatasheetModel
from profiler.gpus import GPUS, GpuEntry
from profiler.measured import MeasuredModel
from profiler.tables.lookup import MS, OperatorTables, load_tables, manifest
from twin.latency import datasheet_for

RESULTS = Path("bench/results/fidelity.json")
IMG = Path("docs/img")


def alternate(values) -> set:
    """Every other interior value: the held-out ones (the ends stay, so nothing extrapolates)."""
    v = sorted(set(values))
    return set(v[1:-1:2])


def m_groups_held(ms) -> set:
    """Held-out GEMM M values: every other group, a group being M and M+1 (a wave boundary)."""
    groups: list[list[int]] = []
    for m in sorted(set(int(x) for x in ms)):
        if groups and m == groups[-1][-1] + 1 and m > 17:
            groups[-1].append(m)
        else:
            groups.append([m])
    return {m for g in groups[1:-1:2] for m in g}


# Datasheet roofline per operator, as DatasheetModel prices a class (same efficiencies) -----
def sheet_gemm(sheet, m, n, k):
    return max(2.0 * m * n * k / (sheet.peak_flops * sheet.gemm_efficiency),
               2.0 * (m * k + n * k + m * n) / (sheet.hbm_bytes_per_s * sheet.bandwidth_efficiency))


def sheet_attention(sheet, batch, length, hq, hkv, d, prefill):
    pairs = batch * (length * (length + 1) / 2 if prefill else length)
    tokens = batch * (length if prefill else 1)
    flops = (4.0 * hq * d + 2.0 * hq) * pairs
    nbytes = 2 * (2 * hq * d + 2 * hkv * d) * tokens + 2 * 2 * hkv * d * batch * length
    return max(flops / (sheet.peak_flops * sheet.attention_efficiency),
               nbytes / (sheet.hbm_bytes_per_s * sheet.bandwidth_efficiency))


def gemm_points(full: OperatorTables, sheet) -> pd.DataFrame:
    df = full.gemm
    out = []
    for axis, held in (("m", m_groups_held(df.m)), ("n", alternate(df.n)), ("k", alternate(df.k))):
        train = OperatorTables(full.source, gemm=df[~df[axis].isin(held)],
                               context=full.context, generation=full.generation)
        test = df[df[axis].isin(held)]
        for (n, k), rows in test.groupby(["n", "k"]):
            curve, _ = train.gemm_curve(int(n), int(k))
            for m, t in zip(rows.m, rows.latency, strict=True):
                out.append(("gemm", axis, m, n, k, t * MS, curve(float(m)),
                            sheet_gemm(sheet, m, n, k)))
    return pd.DataFrame(out, columns=["op", "axis", "m", "n", "k", "measured", "predicted",
                                      "datasheet"])


def attention_points(full: OperatorTables, sheet, prefill: bool) -> pd.DataFrame:
    df, col, offset = (full.context, "isl", 0) if prefill else (full.generation, "step", 1)
    op = "attn_prefill" if prefill else "attn_decode"
    out = []
    keys = ["num_heads", "num_key_value_heads", "head_dim"]
    for (hq, hkv, d), shape_rows in df.groupby(keys):
        for axis, column in (("length", col), ("batch", "batch_size")):
            held = alternate(shape_rows[column])
            if not held:
                continue
            train_rows = shape_rows[~shape_rows[column].isin(held)]
            frames = {"context": full.context, "generation": full.generation}
            frames["context" if prefill else "generation"] = train_rows
            train = OperatorTables(full.source, gemm=full.gemm.iloc[:1], **frames)
            grid_of = train.context_grid if prefill else train.generation_grid
            grid, _ = grid_of(int(hq), int(hkv), int(d))
            for b, length, t in shape_rows[shape_rows[column].isin(held)][
                ["batch_size", col, "latency"]
            ].itertuples(index=False):
                x = float(length + offset)
                out.append((op, axis, b, x, hq, hkv, d, t * MS, grid(float(b), x),
                            sheet_attention(sheet, b, x, hq, hkv, d, prefill)))
    return pd.DataFrame(out, columns=["op", "axis", "batch", "length", "heads", "kv_heads",
                                      "head_dim", "measured", "predicted", "datasheet"])


def ape(pred, meas):
    return np.abs(np.asarray(pred) / np.asarray(meas) - 1.0) * 100.0


def summarise(points: pd.DataFrame) -> dict:
    e, s = ape(points.predicted, points.measured), ape(points.datasheet, points.measured)
    return {"points": int(len(points)), "mape_pct": float(e.mean()),
            "p90_ape_pct": float(np.percentile(e, 90)), "datasheet_mape_pct": float(s.mean())}


def serving_subset(points: pd.DataFrame) -> pd.DataFrame:
    """Shapes an 8B-70B model serves: GEMMs with N, K >= 1024; attention with 8+ heads."""
    if points.op.iloc[0] == "gemm":
        return points[(points.n >= 1024) & (points.k >= 1024)]
    return points[points.heads >= 8]


# Whole iterations against summed measured operators ----------------------------------------
def on_grid_llama():
    base = load_model_config("llama-3.1-8b")
    return replace(base, name="llama-like (shapes on the GEMM grid)", intermediate_size=8192,
                   vocab_size=65536)


def iteration_points(entry: GpuEntry, stack: str, full: OperatorTables) -> list[dict]:
    cfg = on_grid_llama()
    L, h = cfg.num_layers, cfg.hidden_size
    linears = [(cfg.q_size + 2 * cfg.kv_size, h), (h, cfg.q_size),
               (2 * cfg.intermediate_size, h), (h, cfg.intermediate_size)]
    g = full.gemm.set_index(["m", "n", "k"]).latency
    sheet_model = DatasheetModel(cfg, datasheet_for(entry))
    heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)

    def measured_gemms(m, rows):
        layer = sum(float(g[(m, n, k)]) for n, k in linears)
        return (L * layer + float(g[(rows, cfg.vocab_size, h)])) * MS

    out = []
    cases = [("prefill", 1, s) for s in (256, 512, 1024, 2048, 4096, 8192)] + [
        ("decode", b, c) for b in (1, 8, 32, 64, 128, 256) for c in (511, 1023, 2047)
    ]
    for kind, batch, length in cases:
        df = full.context if kind == "prefill" else full.generation
        col = "isl" if kind == "prefill" else "step"
        sel = df[(df.num_heads == heads[0]) & (df.num_key_value_heads == heads[1])
                 & (df.head_dim == heads[2]) & (df.batch_size == batch) & (df[col] == length)]
        tokens = length if kind == "prefill" else batch
        if sel.empty:
            continue
        try:
            truth = measured_gemms(tokens, 1 if kind == "prefill" else batch)
        except KeyError:
            continue
        truth += L * float(sel.latency.iloc[0]) * MS
        # Leave the iteration's attention length out, unless it ends its batch row (that
        # would test extrapolation); leave its GEMM M out unless M sits on a wave boundary
        # the data samples on both sides (its neighbour would stand in for the other wave).
        row = df[(df.num_heads == heads[0]) & (df.num_key_value_heads == heads[1])
                 & (df.head_dim == heads[2]) & (df.batch_size == batch)][col]
        held_df = df if length in (row.min(), row.max()) else df[df[col] != length]
        frames = {"context": full.context, "generation": full.generation}
        frames["context" if kind == "prefill" else "generation"] = held_df
        ms = set(full.gemm.m.unique())
        at_boundary = (tokens + 1) in ms or (tokens - 1) in ms
        gemm = full.gemm if at_boundary or tokens == 1 else full.gemm[full.gemm.m != tokens]
        train = OperatorTables(full.source, gemm=gemm, **frames)
        model = MeasuredModel(cfg, entry, stack, tables=train)
        if kind == "prefill":
            shape = BatchShape(prefill_q=(length,), prefill_ctx=(0,), sampled=1)
        else:
            # The table's step is the cached length; the model adds the token being decoded.
            shape = BatchShape.decode(batch, batch * length)
        t = model.full_sm_times(shape)
        predicted = t["gemm"] + t["attn_prefill"] + t["attn_decode"]
        d = sheet_model.op_times(shape, entry.num_sms)
        sheet = d["gemm"] + d["attn_prefill"] + d["attn_decode"]
        out.append({"kind": kind, "batch": batch, "length": length,
                    "held_out": {"gemm_m": gemm is not full.gemm,
                                 "attention_length": held_df is not df},
                    "measured_s": truth,
                    "predicted_s": predicted, "error_pct": (predicted / truth - 1) * 100,
                    "datasheet_error_pct": (sheet / truth - 1) * 100})
    return out


def stack_spread(entry: GpuEntry, stacks) -> dict:
    cfg = load_model_config("llama-3.1-8b")
    shapes = {"decode 64 x 2048": BatchShape.decode(64, 64 * 2048),
              "prefill 2048": BatchShape(prefill_q=(2048,), prefill_ctx=(0,), sampled=1)}
    out = {}
    for name, shape in shapes.items():
        per = {s: MeasuredModel(cfg, entry, s).full_sm_times(shape) for s in stacks}
        row = {}
        for op in ("gemm", "attn_prefill", "attn_decode"):
            vals = [per[s][op] for s in stacks if per[s][op] > 0]
            if vals:
                row[op] = {"ms": {s: per[s][op] * 1e3 for s in stacks},
                           "max_over_min": max(vals) / min(vals)}
        out[name] = row
    return out


E2E_RUNS = Path("profiler/tables/aiconfigurator/e2e_llama31_8b.csv")
E2E_GPUS = {e.tables: k for k, e in GPUS.items() if e.tables}


def e2e_replays(requests_per_client: int = 4, min_requests: int = 40) -> list[dict]:
    """Replay every published bf16 one-GPU run of Llama-3.1-8B on its GPU and stack."""
    from twin.experiment import SimConfig, simulate

    runs = pd.read_csv(E2E_RUNS)
    runs = runs[runs.precision.isna() | (runs.precision == "bf16")]
    out = []
    for r in runs.itertuples(index=False):
        gpu = E2E_GPUS.get(r.system)
        if gpu is None:
            continue
        c, isl, osl = int(r.batch_size), int(r.isl), int(r.osl)
        n = max(min_requests, requests_per_client * c)
        trace = f"synthetic:n={n},rate=1,prompt=fixed({isl}),output=fixed({osl})"
        row = {"id": r.id, "gpu": gpu, "stack": r.backend, "published_version": r.backend_version,
               "isl": isl, "osl": osl, "concurrency": c,
               "published_ttft_ms": float(r.silicon_ttft_ms),
               "published_tpot_ms": float(r.silicon_tpot_ms)}
        for latency in ("measured", "datasheet"):
            cfg = SimConfig(trace=trace, concurrency=c, gpu=gpu, stack=r.backend, latency=latency)
            s = simulate(cfg).summary
            row[f"{latency}_ttft_ms"] = s["ttft_mean_s"] * 1e3
            row[f"{latency}_tpot_ms"] = s["tpot_mean_s"] * 1e3
            row[f"{latency}_label"] = s["latency_model"]
        out.append(row)
        print(f"e2e {r.system} {r.backend} isl {isl} osl {osl} c {c}: TTFT "
              f"{row['measured_ttft_ms']:.0f} ms (published {row['published_ttft_ms']:.0f}), TPOT "
              f"{row['measured_tpot_ms']:.2f} ms (published {row['published_tpot_ms']:.2f})")
    return out


def e2e_summary(rows: list[dict]) -> dict:
    df = pd.DataFrame(rows)
    out = {"runs": len(df)}
    for latency in ("measured", "datasheet"):
        for metric in ("ttft", "tpot"):
            err = (df[f"{latency}_{metric}_ms"] / df[f"published_{metric}_ms"] - 1) * 100
            out[f"{latency}_{metric}"] = {"median_abs_error_pct": float(err.abs().median()),
                                          "median_error_pct": float(err.median()),
                                          "mean_abs_error_pct": float(err.abs().mean())}
    return out


def plots(points: pd.DataFrame, title: str, label: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    ops = ["gemm", "attn_prefill", "attn_decode"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, op in zip(axes, ops, strict=True):
        p = points[points.op == op]
        ax.loglog(p.measured * 1e6, p.datasheet * 1e6, ".", ms=2, alpha=0.3, label="datasheet")
        ax.loglog(p.measured * 1e6, p.predicted * 1e6, ".", ms=2, alpha=0.4,
                  label="measured tables (held out)")
        lo, hi = p.measured.min() * 1e6, p.measured.max() * 1e6
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set(title=op, xlabel="measured (us)", ylabel="predicted (us)")
        ax.legend(markerscale=5, fontsize=8)
    fig.suptitle(f"{title}\n{label}", fontsize=9)
    fig.tight_layout()
    scatter = IMG / "fidelity_scatter.png"
    fig.savefig(scatter, dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, op in zip(axes, ops, strict=True):
        p = points[points.op == op]
        ax.semilogx(p.measured * 1e6, ape(p.datasheet, p.measured), ".", ms=2, alpha=0.3,
                    label="datasheet")
        ax.semilogx(p.measured * 1e6, ape(p.predicted, p.measured), ".", ms=2, alpha=0.4,
                    label="measured tables (held out)")
        ax.set(title=op, xlabel="measured kernel time (us)", ylabel="abs. error (%)",
               ylim=(0, 100))
        ax.legend(markerscale=5, fontsize=8)
    fig.suptitle(f"{title}: error against size\n{label}", fontsize=9)
    fig.tight_layout()
    by_size = IMG / "fidelity_error_vs_size.png"
    fig.savefig(by_size, dpi=110)
    plt.close(fig)
    return [scatter, by_size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    covered = [k for k, e in GPUS.items() if e.tables in manifest()["gpus"]]
    parser.add_argument("--gpus", default=",".join(covered))
    parser.add_argument("--plot-gpu", default="h100")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--e2e-only", action="store_true",
                        help="only the end-to-end replays, added to an existing --out")
    args = parser.parse_args()
    out = Path(args.out)
    report: dict = {"source": f"{manifest()['source']} {manifest()['version']}", "gpus": {}}
    if args.e2e_only:
        report = json.loads(out.read_text())
        rows = e2e_replays()
        report["e2e"] = {"summary": e2e_summary(rows), "runs": rows}
        print(json.dumps(report["e2e"]["summary"], indent=1))
        out.write_text(json.dumps(report, indent=1, default=float) + "\n")
        print(f"saved {out}")
        return
    for key in args.gpus.split(","):
        entry = GPUS[key]
        stacks = list(manifest()["gpus"][entry.tables])
        sheet = datasheet_for(entry)
        gpu_report: dict = {"stacks": {}, "stack_spread": stack_spread(entry, stacks)}
        for stack in stacks:
            full = load_tables(entry.tables, stack)
            points = pd.concat([gemm_points(full, sheet), attention_points(full, sheet, True),
                                attention_points(full, sheet, False)], ignore_index=True)
            ops = {}
            for op, p in points.groupby("op"):
                ops[op] = {"all": summarise(p), "serving": summarise(serving_subset(p))}
            iters = iteration_points(entry, stack, full)
            errs = {kind: [abs(r["error_pct"]) for r in iters if r["kind"] == kind]
                    for kind in ("prefill", "decode")}
            sheet_errs = {kind: [abs(r["datasheet_error_pct"]) for r in iters
                                 if r["kind"] == kind] for kind in ("prefill", "decode")}
            gpu_report["stacks"][stack] = {
                "version": full.source.version,
                "ops": ops,
                "iterations": iters,
                "iteration_max_abs_error_pct": {k: max(v) for k, v in errs.items() if v},
                "iteration_mean_abs_error_pct": {k: float(np.mean(v)) for k, v in errs.items()
                                                 if v},
                "datasheet_iteration_mean_abs_error_pct": {
                    k: float(np.mean(v)) for k, v in sheet_errs.items() if v
                },
            }
            line = ", ".join(
                f"{op} {v['serving']['mape_pct']:.1f}% (datasheet "
                f"{v['serving']['datasheet_mape_pct']:.0f}%)" for op, v in ops.items()
            )
            worst = ", ".join(
                f"{k} {max(v):.1f}% (mean {np.mean(v):.1f}%, "
                f"datasheet {np.mean(sheet_errs[k]):.0f}%)"
                for k, v in errs.items() if v
            )
            print(f"{key} {stack}: held-out MAPE {line}; iterations worst {worst}")
            if key == args.plot_gpu and stack == "vllm":
                model = MeasuredModel(load_model_config("llama-3.1-8b"), entry, stack)
                title = f"{entry.name}, vLLM {full.source.version}: held-out operators"
                for path in plots(points, title, model.label):
                    print(f"wrote {path}")
        report["gpus"][key] = gpu_report
        for shape, row in gpu_report["stack_spread"].items():
            spread = ", ".join(f"{op} {v['max_over_min']:.2f}x" for op, v in row.items())
            print(f"{key} stack spread, Llama-3.1-8B {shape}: {spread}")
    rows = e2e_replays()
    report["e2e"] = {"summary": e2e_summary(rows), "runs": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
