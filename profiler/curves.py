"""Curve forms for achievable compute rate and bandwidth against SM count.

Compute forms give FLOP/s on ``s`` SMs (time for fixed work is inversely proportional):

- ``power``: t(s) = t_inf * (1 + a / s^b), i.e. rate = r_inf / (1 + a s^-b);
- ``saturating`` (Nexus): rate grows linearly up to ``s_sat`` SMs, then with slope ``decay``
  times the initial one, so time falls as 1/s and then flattens;
- ``amdahl``: t(s) = c0 + c1 / s, i.e. rate = r_inf / (1 + a / s) (``power`` with b = 1).

Bandwidth forms give bytes/s on ``s`` SMs, saturating well before the whole GPU:

- ``exp``: w_max * (1 - exp(-s / s0));
- ``linear_sat`` (Bullet): w_max * min(1, s / s_sat)^p.

Optimisers work on a vector ``x``: rates, bandwidths and scale-like parameters in logs (they
span decades), the others as they are, each with bounds that keep curves positive and
non-decreasing in ``s``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Form:
    name: str
    kind: str  # "compute" or "bandwidth"
    params: tuple[str, ...]
    logs: tuple[bool, ...]  # which parameters the optimiser sees in logs
    fn: Callable[..., np.ndarray]

    def bounds(self, scale: float, num_sms: int) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on ``x``; ``scale`` is the largest plausible rate or bandwidth."""
        lo, hi = [], []
        for p in self.params:
            a, b = _param_range(p, scale, num_sms)
            lo.append(a)
            hi.append(b)
        x_lo = [np.log(a) if log else a for a, log in zip(lo, self.logs, strict=True)]
        x_hi = [np.log(b) if log else b for b, log in zip(hi, self.logs, strict=True)]
        return np.array(x_lo, dtype=float), np.array(x_hi, dtype=float)

    def to_params(self, x: np.ndarray) -> dict[str, float]:
        vals = [float(np.exp(v)) if log else float(v) for v, log in zip(x, self.logs, strict=True)]
        return dict(zip(self.params, vals, strict=True))

    def to_x(self, params: dict[str, float]) -> np.ndarray:
        pairs = zip(self.params, self.logs, strict=True)
        return np.array([np.log(params[p]) if log else params[p] for p, log in pairs], float)

    def __call__(self, params: dict[str, float], sms: Any) -> np.ndarray:
        s = np.asarray(sms, dtype=float)
        return self.fn(s, *(params[p] for p in self.params))


def _param_range(name: str, scale: float, num_sms: int) -> tuple[float, float]:
    if name in ("r_inf", "r_sat", "w_max"):
        return scale * 1e-4, scale * 1.5
    ranges = {
        "a": (1e-3, 1e5),
        "b": (0.2, 3.0),
        "s_sat": (1.0, float(num_sms)),
        "decay": (0.0, 1.0),
        "s0": (0.5, 4.0 * num_sms),
        "p": (0.3, 2.0),
    }
    return ranges[name]


def _power(s, r_inf, a, b):
    return r_inf / (1.0 + a * np.power(s, -b))


def _saturating(s, r_sat, s_sat, decay):
    return r_sat * np.where(s <= s_sat, s / s_sat, 1.0 + decay * (s - s_sat) / s_sat)


def _amdahl(s, r_inf, a):
    return r_inf / (1.0 + a / s)


def _exp(s, w_max, s0):
    return w_max * -np.expm1(-s / s0)


def _linear_sat(s, w_max, s_sat, p):
    return w_max * np.power(np.minimum(1.0, s / s_sat), p)


COMPUTE_FORMS: dict[str, Form] = {
    f.name: f
    for f in (
        Form("power", "compute", ("r_inf", "a", "b"), (True, True, False), _power),
        Form(
            "saturating", "compute", ("r_sat", "s_sat", "decay"), (True, False, False), _saturating
        ),
        Form("amdahl", "compute", ("r_inf", "a"), (True, True), _amdahl),
    )
}
BANDWIDTH_FORMS: dict[str, Form] = {
    f.name: f
    for f in (
        Form("exp", "bandwidth", ("w_max", "s0"), (True, True), _exp),
        Form("linear_sat", "bandwidth", ("w_max", "s_sat", "p"), (True, False, False), _linear_sat),
    )
}
FORMS: dict[str, Form] = {**COMPUTE_FORMS, **BANDWIDTH_FORMS}


def evaluate(curve: dict[str, Any], sms: Any) -> np.ndarray:
    """Value of a stored curve ``{"form": name, "params": {...}}`` at ``sms``."""
    return FORMS[curve["form"]](curve["params"], sms)


def check_curve(curve: Any, kind: str) -> str | None:
    """Why a stored curve cannot be used, or None when it can."""
    forms = COMPUTE_FORMS if kind == "compute" else BANDWIDTH_FORMS
    if not isinstance(curve, dict) or curve.get("form") not in forms:
        return f"{kind} curve needs a form among {', '.join(forms)}"
    params = curve.get("params")
    form = forms[curve["form"]]
    if not isinstance(params, dict) or any(p not in params for p in form.params):
        return f"{kind} curve {form.name!r} needs parameters {', '.join(form.params)}"
    values = [params[p] for p in form.params]
    if not all(isinstance(v, int | float) and np.isfinite(v) for v in values):
        return f"{kind} curve {form.name!r} has a non-numeric parameter"
    if any(v < 0 or (v == 0 and p != "decay") for p, v in zip(form.params, values, strict=True)):
        return f"{kind} curve {form.name!r} needs positive parameters"
    return None
