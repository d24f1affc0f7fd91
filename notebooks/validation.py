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
# # Validation: the simulator against the real engine
#
# Reads a `validation.json` written by `twin validate` and shows how far the simulator was from
# the real runs, metric by metric, and whether it ranked the policies as the hardware did.
# The committed example is a CPU run of a tiny model (the real engine on the CPU, the latency
# model calibrated on the first half of that run), which exercises the whole loop; H100
# figures go in the same format once measured.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, display

ROOT = Path(os.environ.get("TWIN_NB_ROOT", "."))
REPORT = ROOT / os.environ.get("TWIN_VALIDATION", "docs/validation/cpu-tiny/validation.json")
report = json.loads(REPORT.read_text())
print(REPORT, "-", len(report["runs"]), "runs")

# %% [markdown]
# ## Per-iteration latency error

# %%
iteration = pd.DataFrame({r["policy"]: r["iteration_error"] for r in report["runs"]}).T
display(iteration[["iterations", "mape", "p50", "p99"]])

# %% [markdown]
# ## Request metrics: simulated against real

# %%
rows = []
for run in report["runs"]:
    for metric, m in run["metrics"].items():
        rows.append({"policy": run["policy"], "metric": metric, **m})
metrics = pd.DataFrame(rows)
table = metrics.pivot(index="metric", columns="policy", values="error")
display(table.map(lambda e: f"{e:+.1%}"))

# %%
fig, ax = plt.subplots(figsize=(8, 4))
table.plot.barh(ax=ax)
ax.axvline(0, color="k", lw=0.8)
ax.set_xlabel("relative error of the simulation")
ax.grid(alpha=0.3, axis="x")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Ranking

# %%
print(report.get("ranking"))

# %% [markdown]
# ## Figures written next to the report

# %%
for run in report["runs"]:
    folder = REPORT.parent / f"plots-{run['policy']}"
    for name in ("iteration_predicted_vs_measured.png", "latency_cdfs_real_vs_sim.png"):
        if (folder / name).exists():
            display(Image(filename=str(folder / name)))
