# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Policy search: tune nexus and duetserve in simulation
#
# Each trial is one simulation of the Azure conversation trace at a load where the default
# parameters start to miss the SLOs. optuna (TPE, seeded) maximises goodput; every trial keeps
# its TTFT and TBT so we can look at the trade-off. The best configuration is saved as JSON
# that `twin simulate --policy-config` and `twin run --policy-config` accept, which is how the
# winner goes to the hardware unchanged.
#
# Budgets come from the environment so CI can run this notebook small:
# `TWIN_NB_TRIALS` (default 40), `TWIN_NB_MAX_REQUESTS` (default: the whole 10-minute slice),
# `TWIN_NB_WORKERS` (default 0: all cores).

# %%
import json
import os
from pathlib import Path

from IPython.display import Image, display

from policies import Slo
from twin.experiment import SimConfig
from twin.search import pareto_plot, search

TRIALS = int(os.environ.get("TWIN_NB_TRIALS", "40"))
MAX_REQUESTS = (
    int(os.environ["TWIN_NB_MAX_REQUESTS"]) if "TWIN_NB_MAX_REQUESTS" in os.environ else None
)
WORKERS = int(os.environ.get("TWIN_NB_WORKERS", "0"))
OUT = Path(os.environ.get("TWIN_NB_OUT", "notebooks/out"))
OUT.mkdir(parents=True, exist_ok=True)
TRACE, RATE_SCALE = "azure-conv", 5.0
SLO = Slo(ttft_s=2.0, tbt_s=0.1)  # MLPerf Inference's Llama-3.1-8B server constraints

# %% [markdown]
# ## Search
# The first trial starts from each policy's defaults; the defaults also run once on their own
# as the baseline.

# %%
results = {}
for policy in ("nexus", "duetserve"):
    base = SimConfig(
        trace=TRACE, rate_scale=RATE_SCALE, max_requests=MAX_REQUESTS, policy=policy, slo=SLO
    )
    results[policy] = search(base, n_trials=TRIALS, workers=WORKERS, seed=0)
    r = results[policy]
    print(
        f"{policy}: goodput {r.default_goodput:.2f} req/s with defaults -> "
        f"{r.best_goodput:.2f} req/s ({r.best_goodput / r.default_goodput - 1:+.1%}) "
        f"after {len(r.trials)} trials"
    )

# %% [markdown]
# ## The trade-off
# Goodput against p90 TBT for every trial; the red line is the Pareto front (no trial has both
# a lower TBT and a higher goodput).

# %%
for policy, r in results.items():
    display(Image(filename=str(pareto_plot(r, OUT / f"pareto_{policy}.png"))))

# %% [markdown]
# ## The winners
# Saved for `twin simulate --policy-config` and `twin run --policy-config`.

# %%
for policy, r in results.items():
    path = r.save_best(OUT / f"best_{policy}.json")
    print(path, json.dumps(r.best_config(), indent=1))
    print(f"  twin run --trace {TRACE} --rate-scale {RATE_SCALE:g} --policy-config {path}")

# %%
best = {p: r.best_goodput for p, r in results.items()}
default = {p: r.default_goodput for p, r in results.items()}
assert all(best[p] >= default[p] for p in results), "a search never ends below its baseline"
