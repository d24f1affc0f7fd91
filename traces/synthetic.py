"""Synthetic workloads: length distributions and an arrival process, from code or a spec string.

Spec: ``synthetic:n=1000,rate=5,prompt=lognormal(1000,0.8),output=fixed(200),cv=1,seed=0``.
Lengths: ``fixed(v)``, ``uniform(lo,hi)`` (inclusive) or ``lognormal(mean,sigma)`` where
``mean`` is the mean in tokens and ``sigma`` the standard deviation of the log.
"""

from __future__ import annotations

import math
import re

import numpy as np

from policies.numbers import check_number
from traces.arrivals import arrival_times
from traces.errors import TraceError
from traces.workload import Workload

# Beyond these a spec is a typo: more requests than memory holds, longer than any context.
MAX_REQUESTS = 10**7
MAX_LENGTH = 10**7
MAX_SIGMA = 5.0

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
    for v in values:
        check_number(
            v, f"length distribution {spec!r}: argument", high=MAX_LENGTH, error=TraceError
        )
    need = {"fixed": 1, "uniform": 2, "lognormal": 2}[kind]
    if len(values) != need:
        raise TraceError(f"length distribution {spec!r}: {kind} takes {need} argument(s)")
    if min(values[:1] if kind == "lognormal" else values) < 1:
        # A length below one token would silently become one.
        raise TraceError(f"length distribution {spec!r}: lengths must be at least 1 token")
    if kind == "fixed":
        out = np.full(n, values[0])
    elif kind == "uniform":
        lo, hi = values
        if hi < lo:
            raise TraceError(f"length distribution {spec!r}: hi must be >= lo")
        out = rng.integers(int(lo), int(hi) + 1, n)
    else:
        mean, sigma = values
        if sigma < 0 or sigma > MAX_SIGMA:
            raise TraceError(f"length distribution {spec!r}: sigma must be in [0, {MAX_SIGMA:g}]")
        out = rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, n)
    out = np.rint(out)
    if np.any(out > MAX_LENGTH):
        raise TraceError(
            f"length distribution {spec!r} draws lengths beyond {MAX_LENGTH} tokens; "
            "lower its mean or sigma"
        )
    return np.maximum(1, out).astype(np.int64)


def synthetic(
    n: int,
    rate: float,
    prompt: str = "lognormal(1000,0.8)",
    output: str = "lognormal(200,0.8)",
    cv: float = 1.0,
    seed: int = 0,
) -> Workload:
    check_number(n, "synthetic n", integer=True, low=1, high=MAX_REQUESTS, error=TraceError)
    check_number(seed, "synthetic seed", integer=True, low=0, error=TraceError)
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
