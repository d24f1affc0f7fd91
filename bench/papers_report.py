"""docs/papers.md from bench/papers.py's results: the papers' numbers beside the twin's."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from papers_text import latency_kind  # noqa: E402

BASE = "base"


def _group(results, **match):
    return [r for r in results if all(r[k] == v for k, v in match.items())]


def _rate_under(rows, key, limit):
    from papers import highest_rate_under

    return highest_rate_under(rows, key, limit)


def _cap(rows, limit) -> str:
    rate, how = _rate_under(rows, "normalized_latency_s", limit)
    return {"below": f"< {rate:.2g}", "above": f">= {rate:.2g}"}.get(how, f"{rate:.2f}")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 and not math.isnan(a) else "n/a"


KEEP_UP = 0.85  # completed / offered below this: the queue grows, whatever the latency mean


def _keeping_up(rows):
    """Rows whose completed rate falls behind the offered one count as over every limit."""
    return [
        {**r, "normalized_latency_s": math.inf} if r["throughput_rps"] < KEEP_UP * r["rate"] else r
        for r in rows
    ]


def _capacity(rows, limit) -> float:
    rate, how = _rate_under(rows, "normalized_latency_s", limit)
    return 0.0 if how == "below" else rate


def _slo_throughput(rows, attainment):
    ok = [r["throughput_rps"] for r in rows if r["tbt_attainment"] >= attainment]
    return max(ok) if ok else 0.0


def nexus_tables(rep) -> tuple[list[str], dict]:
    res, limits = rep["results"], rep["norm_limits_s"]
    lines = [
        "| model | workload | limit (s/token) | vllm | sglang | nexus | nexus/vllm | nexus/sglang "
        "| nexus/vllm, keeping up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios, kept = [], []
    for model in dict.fromkeys(r["model"] for r in _group(res, paper="nexus")):
        for wl in dict.fromkeys(r["workload"] for r in _group(res, paper="nexus")):
            rows = {
                p: _group(res, paper="nexus", model=model, workload=wl, policy=p, variant=BASE)
                for p in ("vllm", "sglang", "nexus")
            }
            for limit in limits:
                caps = {p: _capacity(rows[p], limit) for p in rows}
                up = {p: _capacity(_keeping_up(rows[p]), limit) for p in ("vllm", "nexus")}
                ratios.append(caps["nexus"] / caps["vllm"] if caps["vllm"] else math.nan)
                kept.append(up["nexus"] / up["vllm"] if up["vllm"] else math.nan)
                lines.append(
                    f"| {model} | {wl} | {limit:g} | {_cap(rows['vllm'], limit)} | "
                    f"{_cap(rows['sglang'], limit)} | {_cap(rows['nexus'], limit)} | "
                    f"{_ratio(caps['nexus'], caps['vllm'])} | "
                    f"{_ratio(caps['nexus'], caps['sglang'])} "
                    f"| {_ratio(up['nexus'], up['vllm'])} |"
                )

    def span(values):
        finite = [v for v in values if not math.isnan(v)]
        return min(finite, default=math.nan), max(finite, default=math.nan)

    (lo, hi), (klo, khi) = span(ratios), span(kept)
    return lines, {"min": lo, "max": hi, "kept_min": klo, "kept_max": khi}


def nexus_latency(rep) -> tuple[list[str], dict]:
    """TTFT and TBT beside vLLM at vLLM's highest rate under the middle limit."""
    res, limit = rep["results"], rep["norm_limits_s"][1]
    lines = [
        "| model | workload | rate | p90 TTFT vllm / nexus | p99 TBT vllm / nexus |",
        "|---|---|---|---|---|",
    ]
    ttft = []
    for model in dict.fromkeys(r["model"] for r in _group(res, paper="nexus")):
        for wl in dict.fromkeys(r["workload"] for r in _group(res, paper="nexus")):
            v = sorted(
                _group(res, paper="nexus", model=model, workload=wl, policy="vllm", variant=BASE),
                key=lambda r: r["rate"],
            )
            n = sorted(
                _group(res, paper="nexus", model=model, workload=wl, policy="nexus", variant=BASE),
                key=lambda r: r["rate"],
            )
            cap = _capacity(v, limit)
            i = max([j for j, r in enumerate(v) if r["rate"] <= cap] or [0])
            a, b = v[i], n[i]
            ttft.append(a["ttft_p90_s"] / b["ttft_p90_s"])
            lines.append(
                f"| {model} | {wl} | {a['rate']:.2g} | {a['ttft_p90_s'] / b['ttft_p90_s']:.2f}x "
                f"({a['ttft_p90_s']:.2f} / {b['ttft_p90_s']:.2f} s) | "
                f"{a['tbt_p99_s'] / b['tbt_p99_s']:.2f}x ({1e3 * a['tbt_p99_s']:.0f} / "
                f"{1e3 * b['tbt_p99_s']:.0f} ms) |"
            )
    return lines, {"min": min(ttft), "max": max(ttft)}


def duet_tables(rep) -> tuple[list[str], dict]:
    res, att = rep["results"], rep["attainment"]
    labels = ("vllm", "sglang", "duetserve", "duetserve (2-SM TPCs)")
    lines = [
        "| model | trace | metric | "
        + " | ".join(labels)
        + " | duetserve/sglang | duetserve/vllm |",
        "|---|---|---|" + "---|" * (len(labels) + 2),
    ]
    out = {}
    for model in dict.fromkeys(r["model"] for r in _group(res, paper="duetserve")):
        for wl in dict.fromkeys(r["workload"] for r in _group(res, paper="duetserve")):
            rows = {
                lab: _group(
                    res, paper="duetserve", model=model, workload=wl, label=lab, variant=BASE
                )
                for lab in labels
            }
            metrics = {
                "peak completed req/s": {
                    k: max(r["throughput_rps"] for r in v) for k, v in rows.items()
                },
                f"req/s with >= {att:.0%} meeting TBT": {
                    k: _slo_throughput(v, att) for k, v in rows.items()
                },
            }
            if wl == "azure-code":
                metrics["completed req/s at 16 offered"] = {
                    k: next((r["throughput_rps"] for r in v if r["rate"] == 16), math.nan)
                    for k, v in rows.items()
                }
            for name, vals in metrics.items():
                out[(model, wl, name)] = vals
                lines.append(
                    f"| {model} | {wl} | {name} | "
                    + " | ".join(f"{vals[k]:.2f}" for k in labels)
                    + f" | {_ratio(vals['duetserve'], vals['sglang'])} | "
                    f"{_ratio(vals['duetserve'], vals['vllm'])} |"
                )
    return lines, out


def sensitivity(rep) -> list[str]:
    res, limit, att = rep["results"], rep["norm_limits_s"][1], rep["attainment"]
    lines = [
        f"Nexus, Qwen2.5-3B on the L20 ({latency_kind(rep, 'nexus')}): throughput at "
        f"normalized latency <= {limit:g} s/token.",
        "",
        "| modelled part | workload | vllm | sglang | nexus | nexus/vllm | nexus/sglang |",
        "|---|---|---|---|---|---|---|",
    ]
    variants = list(dict.fromkeys(r["variant"] for r in res))
    for wl in ("ldc-synthetic", "mixed-synthetic"):
        for v in variants:
            caps = {}
            for p in ("vllm", "sglang", "nexus"):
                rows = _group(
                    res, paper="nexus", model="qwen2.5-3b", workload=wl, policy=p, variant=v
                )
                rows = rows or _group(
                    res, paper="nexus", model="qwen2.5-3b", workload=wl, policy=p, variant=BASE
                )
                caps[p] = _capacity(rows, limit)
            if v != BASE and not _group(res, paper="nexus", workload=wl, variant=v):
                continue
            lines.append(
                f"| {v} | {wl} | {caps['vllm']:.2f} | {caps['sglang']:.2f} | {caps['nexus']:.2f} | "
                f"{_ratio(caps['nexus'], caps['vllm'])} | {_ratio(caps['nexus'], caps['sglang'])} |"
            )
    lines += [
        "",
        f"DuetServe, Qwen3-8B on the H100 ({latency_kind(rep, 'duetserve')}): req/s with "
        f">= {att:.0%} of requests meeting the TBT SLO, and peak completed req/s.",
        "",
        "| modelled part | trace | vllm | sglang | duetserve | duetserve/sglang "
        "| peak duetserve/sglang |",
        "|---|---|---|---|---|---|---|",
    ]
    for wl in ("azure-code", "mooncake"):
        fixed = _group(res, paper="duetserve", workload=wl, label="duetserve (k = 4)")
        if fixed:
            base = {
                p: _group(
                    res, paper="duetserve", model="qwen3-8b", workload=wl, label=p, variant=BASE
                )
                for p in ("vllm", "sglang", "duetserve")
            }
            slo = {p: _slo_throughput(rows, att) for p, rows in base.items()}
            slo["duetserve"] = _slo_throughput(fixed, att)
            peak_k = max(r["throughput_rps"] for r in fixed)
            peak_s = max(r["throughput_rps"] for r in base["sglang"])
            lines.append(
                f"| look-ahead k fixed at 4 (not chosen with the split) | {wl} | "
                f"{slo['vllm']:.2f} | {slo['sglang']:.2f} | {slo['duetserve']:.2f} | "
                f"{_ratio(slo['duetserve'], slo['sglang'])} | {_ratio(peak_k, peak_s)} |"
            )
        for v in variants:
            if v != BASE and not _group(res, paper="duetserve", workload=wl, variant=v):
                continue
            slo, peak = {}, {}
            for p in ("vllm", "sglang", "duetserve"):
                rows = _group(
                    res, paper="duetserve", model="qwen3-8b", workload=wl, label=p, variant=v
                )
                rows = rows or _group(
                    res, paper="duetserve", model="qwen3-8b", workload=wl, label=p, variant=BASE
                )
                slo[p] = _slo_throughput(rows, att)
                peak[p] = max(r["throughput_rps"] for r in rows)
            lines.append(
                f"| {v} | {wl} | {slo['vllm']:.2f} | {slo['sglang']:.2f} | "
                f"{slo['duetserve']:.2f} | {_ratio(slo['duetserve'], slo['sglang'])} | "
                f"{_ratio(peak['duetserve'], peak['sglang'])} |"
            )
    return lines


def plots(rep, img: Path) -> list[Path]:
    img.mkdir(parents=True, exist_ok=True)
    res, written = rep["results"], []
    nexus_wls = list(dict.fromkeys(r["workload"] for r in _group(res, paper="nexus")))
    fig, axes = plt.subplots(1, len(nexus_wls), figsize=(4 * len(nexus_wls), 3.4))
    for ax, wl in zip(axes, nexus_wls, strict=True):
        for p in ("vllm", "sglang", "nexus"):
            rows = sorted(
                _group(res, paper="nexus", model="qwen2.5-3b", workload=wl, policy=p, variant=BASE),
                key=lambda r: r["rate"],
            )
            ax.plot(
                [r["rate"] for r in rows],
                [r["normalized_latency_s"] for r in rows],
                marker="o",
                label=p,
            )
        for limit in rep["norm_limits_s"]:
            ax.axhline(limit, color="grey", lw=0.6, ls=":")
        ax.set(title=wl, xlabel="Poisson rate (req/s)", yscale="log")
    axes[0].set_ylabel("E2E / output tokens (s)")
    axes[0].legend()
    fig.suptitle(
        f"Nexus setup: Qwen2.5-3B, L20 {latency_kind(rep, 'nexus')} "
        "(SM scaling, contention: modelled)",
        fontsize=9,
    )
    fig.tight_layout()
    written.append(img / "papers_nexus.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, wl in zip(axes, ("azure-code", "azure-conv", "mooncake"), strict=True):
        for lab in ("vllm", "sglang", "duetserve", "duetserve (2-SM TPCs)"):
            rows = sorted(
                _group(
                    res, paper="duetserve", model="qwen3-8b", workload=wl, label=lab, variant=BASE
                ),
                key=lambda r: r["rate"],
            )
            ax.plot(
                [r["rate"] for r in rows],
                [r["throughput_rps"] for r in rows],
                marker="o",
                label=lab,
            )
        ax.set(title=wl, xlabel="offered Poisson rate (req/s)")
    axes[0].set_ylabel("completed req/s")
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"DuetServe setup: Qwen3-8B, H100 {latency_kind(rep, 'duetserve')} "
        "(SM scaling, contention: modelled)",
        fontsize=9,
    )
    fig.tight_layout()
    written.append(img / "papers_duetserve.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write_report(rep: dict, doc: Path, img: Path) -> None:
    from papers_text import render

    nexus, nexus_range = nexus_tables(rep)
    latency, ttft_range = nexus_latency(rep)
    duet, duet_vals = duet_tables(rep)
    figures = plots(rep, img)
    labels = sorted({r["latency_model"] for r in rep["results"] if r["variant"] == BASE})
    doc.write_text(
        render(
            rep,
            nexus=nexus,
            nexus_range=nexus_range,
            latency=latency,
            ttft_range=ttft_range,
            duet=duet,
            duet_vals=duet_vals,
            sensitivity=sensitivity(rep),
            figures=[
                f.relative_to(doc.parent) if f.is_relative_to(doc.parent) else f for f in figures
            ],
            labels=labels,
        )
    )
