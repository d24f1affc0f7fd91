"""Policies by name, each with its parameters as a dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from policies.batch import Batch
from policies.partition import Lane, Partition
from policies.view import EngineView


class PolicyError(ValueError):
    """Unknown policy, duplicate registration or a bad parameter; the message is one line."""


class Policy(Protocol):
    name: str

    def partition(self, view: EngineView) -> Partition: ...

    def next_batch(self, view: EngineView, lane: Lane) -> Batch | None: ...


_REGISTRY: dict[str, tuple[Callable[..., Policy], type]] = {}


def register(name: str, params_cls: type) -> Callable[[type], type]:
    """Class decorator: make the policy buildable as ``policies.get(name, **params)``."""

    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise PolicyError(f"policy name {name!r} is already registered")
        _REGISTRY[name] = (cls, params_cls)
        cls.name = name
        cls.params_cls = params_cls
        return cls

    return wrap


def names() -> list[str]:
    return sorted(_REGISTRY)


def params_class(name: str) -> type:
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[Callable[..., Policy], type]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; choose one of: {', '.join(names())}") from None


def get(name: str, **params: Any) -> Policy:
    """Build a policy from its name and parameter values (strings are converted)."""
    cls, params_cls = _lookup(name)
    return cls(make_params(name, params_cls, params))


def make_params(name: str, params_cls: type, values: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise PolicyError(
                f"policy {name!r} has no parameter {key!r}; its parameters are: "
                f"{', '.join(fields) or 'none'}"
            )
        kwargs[key] = _convert(name, key, value, fields[key].type, getattr(params_cls, key, None))
    try:
        return params_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"policy {name!r}: {exc}") from None


def _convert(name: str, key: str, value: Any, annotation: Any, default: Any) -> Any:
    if not isinstance(value, str):
        return value
    kind = type(default) if default is not None else str
    text = str(annotation)
    try:
        if kind is bool or text == "bool":
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int or text == "int":
            return int(value)
        if kind is float or text == "float":
            return float(value)
    except ValueError:
        raise PolicyError(
            f"policy {name!r} parameter {key!r} wants {_article(kind.__name__)}, got {value!r}"
        ) from None
    return value


def _article(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def params_dict(policy: Policy) -> dict[str, Any]:
    params = getattr(policy, "params", None)
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}
