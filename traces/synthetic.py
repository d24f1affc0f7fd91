"""Synthetic workloads: length distributions and an arrival process, from code or a spec string.

Spec: ``synthetic:n=1000,rate=5,prompt=lognormal(1000,0.8),output=fixed(200),cv=1,seed=0``.
Lengths: ``fixed(v)``, ``uniform(lo,hi)`` (inclusive) or ``lognormal(mean,sigma)`` where
``mean`` is the mean in tokens and ``sigma`` the standard deviation of the log.
"""

from __future__ import annotations

import math
import re

import numpy as np

from traces.arrivals import arrival_times
from traces.errors import TraceError
from traces.workload import Workload

_DIST = re.compile(r"^\s*(fixed|uniform|lognormal)\s*\(([^)]*)\)\s*$")


def lengths(spec: str, n: int, rng: np.random.Generator) -> np.ndarray:
    match = _DIST.match(spec)
    if not match:
        raise TraceError(
            f"length distribution {spec!r}: use fixed(v), uniform(lo,hi) or lognormal(mean,sigma)"
        )
    kind, args = match.group(1), match.group(2)
    try:
        values = [float(a) for a in args.split(",")]
    except ValueError:
        raise TraceError(f"length distribution {spec!r}: arguments must be numbers") from None
    need = {"fixed": 1, "uniform": 2, "lognormal": 2}[kind]
    if len(values) != need:
        raise TraceError(f"length distribution {spec!r}: {kind} takes {need} argument(s)")
    if kind == "fixed":
        out = np.full(n, values[0])
    elif kind == "uniform":
        lo, hi = values
        if hi < lo:
            raise TraceError(f"length distribution {spec!r}: hi must be >= lo")
        out = rng.integers(int(lo), int(hi) + 1, n)
    else:
        mean, sigma = values
        if mean <= 0 or sigma < 0:
            raise TraceError(f"length distribution {spec!r}: mean must be > 0 and sigma >= 0")
        out = rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, n)
    return np.maximum(1, np.rint(out)).astype(np.int64)


def synthetic(
    n: int,
    rate: float,
    prompt: str = "lognormal(1000,0.8)",
    output: str = "lognormal(200,0.8)",
    cv: float = 1.0,
    seed: int = 0,
) -> Workload:
    if n < 1:
        raise TraceError(f"a synthetic workload needs n >= 1 requests, got {n}")
    rng = np.random.default_rng(seed)
    p = lengths(prompt, n, rng)
    o = lengths(output, n, rng)
    return Workload(
        arrival_times(n, rate, cv, seed + 1),
        p,
        o,
        name="synthetic",
        source=f"synthetic:n={n},rate={rate},prompt={prompt},output={output},cv={cv}",
        notes={"format": "synthetic", "seed": seed},
    )


def from_spec(spec: str, rate: float | None, cv: float, seed: int) -> Workload:
    """Parse ``synthetic:key=value,...``; ``rate``/``cv``/``seed`` arguments are defaults."""
    body = spec.split(":", 1)[1]
    fields: dict[str, str] = {}
    for part in re.split(r",(?![^(]*\))", body) if body else []:
        key, sep, value = part.partition("=")
        if not sep:
            raise TraceError(f"synthetic spec {spec!r}: {part!r} is not key=value")
        fields[key.strip()] = value.strip()
    allowed = {"n", "rate", "prompt", "output", "cv", "seed"}
    unknown = set(fields) - allowed
    if unknown:
        raise TraceError(
            f"synthetic spec {spec!r}: unknown key {sorted(unknown)[0]!r}; "
            f"use {', '.join(sorted(allowed))}"
        )
    try:
        n = int(fields.get("n", 1000))
        rate_value = float(fields["rate"]) if "rate" in fields else rate
        cv_value = float(fields.get("cv", cv))
        seed_value = int(fields.get("seed", seed))
    except ValueError as exc:
        raise TraceError(f"synthetic spec {spec!r}: {exc}") from None
    if rate_value is None:
        raise TraceError(f"synthetic spec {spec!r} needs a rate: add rate=R or pass --rate")
    return synthetic(
        n,
        rate_value,
        fields.get("prompt", "lognormal(1000,0.8)"),
        fields.get("output", "lognormal(200,0.8)"),
        cv_value,
        seed_value,
    )
