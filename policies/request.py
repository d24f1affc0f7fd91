"""A request and its progress through prefill and decode."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Status(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    REJECTED = "rejected"
    ABORTED = "aborted"


@dataclass(slots=True, eq=False)
class Request:
    """One request. Identity is the object itself; ``id`` is for records and logs.

    Progress follows recompute-style preemption: ``prefill_target`` is the number of tokens
    whose KV must be computed before decoding can (re)start. It is the prompt at first and the
    prompt plus everything generated so far after a preemption. ``kv_tokens`` counts tokens
    whose KV is in the cache. The prefill pass that reaches ``prefill_target`` samples a token,
    and each decode step writes one KV entry and samples one token.

    Prefix caching: ``content`` names the prompt's tokens (token ids, or trace block ids each
    covering ``tokens_per_id`` tokens) and ``block_hashes`` the content addresses of its full KV
    blocks (``policies.block_hash``); the first ``shared_blocks`` of them can be shared with other
    requests. ``cached_tokens`` counts the prompt tokens found in the cache at first admission,
    ``hit_tokens`` those found at every admission (a recomputed request may find its own blocks).
    """

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prompt_ids: list[int] | None = None
    prefill_target: int = 0
    kv_tokens: int = 0
    generated: int = 0
    scheduled_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan
    preemptions: int = 0
    status: Status = Status.WAITING
    reject_reason: str = ""  # why it was refused at arrival (policies.admission)
    in_flight: bool = False
    # Every output token's time (floats, or a run's array of step ends), when the engine keeps
    # them: the runtime always (its servers time tokens live), a simulation when asked.
    token_times: list = field(default_factory=list)
    content: tuple[int, ...] | None = None
    tokens_per_id: int = 1
    block_hashes: list[int] | None = None
    shared_blocks: int = 0
    cached_tokens: int = 0
    hit_tokens: int = 0
    admissions: int = 0

    def __post_init__(self) -> None:
        if self.prefill_target == 0:
            self.prefill_target = self.prompt_tokens

    @property
    def remaining_prefill(self) -> int:
        return self.prefill_target - self.kv_tokens

    @property
    def remaining_output(self) -> int:
        return self.output_tokens - self.generated

    @property
    def is_prefilling(self) -> bool:
        return self.kv_tokens < self.prefill_target

    @property
    def is_decoding(self) -> bool:
        return self.kv_tokens >= self.prefill_target and self.generated < self.output_tokens

    @property
    def done(self) -> bool:
        return self.generated >= self.output_tokens

    def token_times_array(self) -> np.ndarray:
        """Every output token's time, in order (engines append floats or arrays of times)."""
        parts: list[np.ndarray] = []
        floats: list[float] = []
        for t in self.token_times:
            if isinstance(t, np.ndarray):
                if floats:
                    parts.append(np.array(floats))
                    floats = []
                parts.append(t)
            else:
                floats.append(t)
        if floats:
            parts.append(np.array(floats))
        if not parts:
            return np.empty(0)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def reset_for_recompute(self) -> None:
        """Drop the KV; the prompt plus the tokens generated so far must be prefilled again."""
        self.kv_tokens = 0
        self.prefill_target = self.prompt_tokens + self.generated
        self.preemptions += 1
        self.status = Status.WAITING
