"""Policy search: tune a policy's parameters in simulation with optuna.

Each trial is one simulation (a ``SimConfig`` with the trial's parameters), run on the sweep
executors, so trials go in parallel on local processes or a Ray cluster. A study is stored in a
journal file (or any optuna storage URL): several machines can work on one study, and a
stopped search resumes where it was. The objective is goodput under the run's SLOs; TTFT and
TBT are kept on every trial for the Pareto plot.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import policies
from twin.errors import TwinError
from twin.experiment import SimConfig

# name -> (kind, low, high) for floats/ints, or ("choice", options)
SPACES: dict[str, dict[str, tuple]] = {
    "nexus": {
        "kv_threshold": ("float", 0.5, 0.95),
        "decode_slack": ("float", 1.0, 1.5),
        "prefill_slack": ("float", 1.0, 2.0),
        "hysteresis": ("float", 0.0, 0.3),
        "aging": ("float", 0.0, 60.0),
        "step_fraction": ("choice", (0.01, 0.03, 0.06)),
        "max_num_batched_tokens": ("choice", (2048, 4096, 8192, 16384)),
    },
    "duetserve": {
        "max_lookahead": ("int", 1, 16),
        "tbt_target_s": ("float", 0.02, 0.2),
        "max_num_batched_tokens": ("choice", (2048, 4096, 8192, 16384)),
    },
    "static-split": {
        "decode_sms": ("choice", (16, 24, 32, 40, 48, 56, 64, 72, 80, 88)),
        "max_num_batched_tokens": ("choice", (2048, 4096, 8192, 16384)),
    },
    "vllm": {"max_num_batched_tokens": ("choice", (512, 1024, 2048, 4096, 8192, 16384))},
}
KEPT = ("goodput_rps", "throughput_rps", "ttft_p90_s", "tbt_p90_s", "slo_attainment")


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    params = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "float":
            params[name] = trial.suggest_float(name, spec[1], spec[2])
        elif kind == "int":
            params[name] = trial.suggest_int(name, spec[1], spec[2])
        else:
            params[name] = trial.suggest_categorical(name, list(spec[1]))
    return params


@dataclass
class SearchResult:
    policy: str
    best_params: dict[str, Any]
    best_goodput: float
    default_goodput: float
    trials: pd.DataFrame

    def best_config(self) -> dict[str, Any]:
        """The JSON `twin simulate/run --policy-config` accepts."""
        return {
            "policy": self.policy,
            "params": self.best_params,
            "goodput_rps": self.best_goodput,
            "default_goodput_rps": self.default_goodput,
        }

    def save_best(self, path: Path) -> Path:
        path.write_text(json.dumps(self.best_config(), indent=2) + "\n")
        return path


def search(
    base: SimConfig,
    n_trials: int,
    workers: int = 1,
    ray: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    space: dict[str, tuple] | None = None,
    progress: bool = False,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Maximise goodput of ``base.policy`` over its parameter space on ``base``'s workload.

    Trials run in batches of ``workers`` on the sweep executor; the sampler is seeded, so the
    same call gives the same study. ``storage`` (a path to a journal file, or an optuna URL)
    keeps the study between calls and machines; the first trial starts from the defaults.
    """
    import optuna

    from twin.sweep import make_executor, run_spec

    space = space or SPACES.get(base.policy)
    if not space:
        raise TwinError(f"no search space for policy {base.policy!r}; choose one of {list(SPACES)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name or f"{base.policy}-{base.trace}",
        storage=_storage(storage),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        load_if_exists=True,
    )
    defaults = policies.params_dict(policies.get(base.policy, **base.policy_args))
    if not study.trials:
        study.enqueue_trial(_within(defaults, space), skip_if_exists=True)
    executor = make_executor(workers, ray)
    try:
        done = len([t for t in study.trials if t.state.is_finished()])
        while done < n_trials:
            batch = [study.ask() for _ in range(min(max(1, workers), n_trials - done))]
            specs = {}
            for trial in batch:
                params = suggest(trial, space)
                cfg = dataclasses.replace(base, policy_args={**base.policy_args, **params})
                specs[trial.number] = (trial, cfg)
            for number, row in executor.map_unordered(
                _run_numbered, [(n, cfg) for n, (_, cfg) in specs.items()]
            ):
                trial = specs[number][0]
                if row.get("status") != "ok" or not math.isfinite(row.get("goodput_rps", math.nan)):
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    for key in KEPT:
                        trial.set_user_attr(key, float(row[key]))
                    if "latency_model" in row:  # the figures say which model made them
                        trial.set_user_attr("latency_model", str(row["latency_model"]))
                    study.tell(trial, float(row["goodput_rps"]))
                if on_trial is not None:
                    on_trial(row)
            done += len(batch)
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()
    baseline = run_spec(base)
    if baseline["status"] != "ok":
        raise TwinError(f"the default {base.policy} run failed: {baseline['error']}")
    return _result(study, base.policy, space, defaults, float(baseline["goodput_rps"]))


def _run_numbered(item: tuple[int, SimConfig]) -> tuple[int, dict[str, Any]]:
    from twin.sweep import run_spec

    number, cfg = item
    return number, run_spec(cfg)


def _storage(storage: str | None):
    if storage is None:
        return None
    if "://" in storage:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))


def _within(defaults: dict[str, Any], space: dict[str, tuple]) -> dict[str, Any]:
    """The default parameters the space can express (the first trial starts from them)."""
    out = {}
    for name, spec in space.items():
        value = defaults.get(name)
        if value is None:
            continue
        inside = value in spec[1] if spec[0] == "choice" else spec[1] <= value <= spec[2]
        if inside:
            out[name] = value
    return out


def _result(study, policy: str, space, defaults, default_goodput: float) -> SearchResult:
    rows = []
    for t in study.trials:
        if t.state.name != "COMPLETE":
            continue
        rows.append({"trial": t.number, **t.params, **t.user_attrs})
    trials = pd.DataFrame(rows)
    if trials.empty:
        raise TwinError("every trial failed; check the trace and policy with `twin simulate`")
    best = study.best_trial
    params = {**{k: defaults[k] for k in space if k in defaults}, **best.params}
    return SearchResult(policy, params, float(best.value), default_goodput, trials)


def pareto_front(trials: pd.DataFrame, x: str = "tbt_p90_s", y: str = "goodput_rps"):
    """Trials no other trial beats on both lower ``x`` and higher ``y``."""
    ordered = trials.sort_values([x, y], ascending=[True, False])
    front, best = [], -math.inf
    for _, row in ordered.iterrows():
        if row[y] > best:
            front.append(row)
            best = row[y]
    return pd.DataFrame(front)


def pareto_plot(
    result: SearchResult, path: Path, x: str = "tbt_p90_s", label: str | None = None
) -> Path:
    """Goodput against ``x`` for every trial; ``label`` names the latency model (default: the
    trials' own ``latency_model`` column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twin.outputs.plot_style import finish, legend_outside

    trials = result.trials
    front = pareto_front(trials, x)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(trials[x] * 1e3, trials["goodput_rps"], s=18, alpha=0.6, label="trials")
    ax.plot(front[x] * 1e3, front["goodput_rps"], color="crimson", marker="o", label="Pareto front")
    ax.axhline(result.default_goodput, color="k", ls=":", lw=1, label="defaults' goodput")
    ax.set_xlabel(f"{x.replace('_s', '')} (ms)")
    ax.set_ylabel("goodput (req/s)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    if label is None and "latency_model" in trials and len(trials):
        label = str(trials["latency_model"].iloc[0])
    return finish(fig, f"{result.policy}: {len(trials)} trials", label or "", path)
