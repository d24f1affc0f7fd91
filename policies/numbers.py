"""Numbers from users, checked once: finite, in range, and whole where a count is meant.

NaN compares false with everything, so an ``x <= 0`` check lets it through and it reaches the
simulation as NaN times. Every parameter dataclass, command-line flag, trace loader and
request field checks its numbers with these functions instead of its own comparisons.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

# Counts and sizes above this are typos, not workloads; it also keeps them exact in a float.
MAX_COUNT = 2**53


def check_number(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    error: type[Exception] = ValueError,
) -> Any:
    """``value`` when it is a finite number in range, else ``error`` naming ``name``.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``. A whole float (``8.0``)
    passes as an integer and comes back as ``int``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a whole number" if integer else "a number"
        raise error(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    if integer:
        if isinstance(value, numbers.Integral):
            value = int(value)
        elif float(value).is_integer():
            value = int(value)
        else:
            raise error(f"{name} must be a whole number, got {value!r}")
        # MAX_COUNT bounds only the sides the caller left open: a seed may span all of int64.
        if (high is None and value > MAX_COUNT) or (low is None and value < -MAX_COUNT):
            raise error(f"{name} is too large ({value}); at most {MAX_COUNT} in size")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise error(f"{name} must be {_range(low, high, low_open, high_open)}, got {value!r}")
    return value


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        if low == 0:
            return "positive" if low_open else "zero or positive"
        return f"{'>' if low_open else '>='} {_show(low)}"
    if low is None:
        return f"{'<' if high_open else '<='} {_show(high)}"
    return f"in {'(' if low_open else '['}{_show(low)}, {_show(high)}{')' if high_open else ']'}"


def _show(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def check_fields(
    obj: Any, error: type[Exception] = ValueError, label: Callable[[str], str] = str
) -> None:
    """Every ``int``/``float`` field of a dataclass is a finite number (whole for ``int``).

    Called first in a parameter dataclass's ``__post_init__``, so its own range checks only
    ever see real numbers. Whole floats given for ``int`` fields are stored as ``int``.
    ``label`` turns a field name into the name the user wrote (a flag, a JSON key).
    """
    for f in dataclasses.fields(obj):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        optional = kind.endswith("| None")
        kind = kind.removesuffix("| None").strip()
        if kind not in ("int", "float", "bool"):
            continue
        value = getattr(obj, f.name)
        if optional and value is None:
            continue
        if kind == "bool":
            if not isinstance(value, bool):
                raise error(f"{label(f.name)} must be true or false, got {value!r}")
            continue
        checked = check_number(value, label(f.name), integer=kind == "int", error=error)
        if checked is not value:
            object.__setattr__(obj, f.name, checked)
