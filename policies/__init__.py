"""Serving policies and the state they decide on: pure Python, shared by every engine.

A policy reads an ``EngineView`` and returns a ``Batch`` for a free lane and a ``Partition``
of the SMs. The simulator (``twin``) and the real runtime (``gpu_runtime``) call the same
objects through the same interface.
"""

from policies import (  # noqa: F401  (registers the policies)
    disagg,
    duetserve,
    nexus,
    sglang,
    static_split,
    vllm,
)
from policies.base import SchedulingPolicy
from policies.batch import UNTIL_CHANGE, ArrivalAdmission, Batch, BatchShape, PrefillChunk
from policies.kvcache import KVBudget, KVCache, KVExhausted
from policies.partition import GpuSpec, Lane, Partition
from policies.registry import Policy, PolicyError, get, names, params_class, params_dict, register
from policies.request import Request, Status
from policies.view import EngineView, LatencyModel, Slo

__all__ = [
    "UNTIL_CHANGE",
    "ArrivalAdmission",
    "Batch",
    "BatchShape",
    "EngineView",
    "GpuSpec",
    "KVBudget",
    "KVCache",
    "KVExhausted",
    "Lane",
    "LatencyModel",
    "Partition",
    "Policy",
    "PolicyError",
    "PrefillChunk",
    "Request",
    "SchedulingPolicy",
    "Slo",
    "Status",
    "get",
    "names",
    "params_class",
    "params_dict",
    "register",
]
