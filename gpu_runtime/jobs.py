"""A request as the real engine serves it: its policy-visible ``Request`` plus its tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from gpu_runtime.sampling import SamplingParams
from policies import Request


class JobListener(Protocol):
    """Called on the engine's thread; implementations must hand work off, never block."""

    def started(self, job: Job) -> None: ...

    def tokens(self, job: Job, ids: list[int]) -> None: ...

    def finished(self, job: Job) -> None: ...


@dataclass(eq=False)
class Job:
    request: Request
    sampling: SamplingParams = field(default_factory=SamplingParams)
    ignore_eos: bool = False
    eos_ids: frozenset[int] = frozenset()
    listener: JobListener | None = None
    ids: list[int] = field(default_factory=list)  # prompt then every generated token
    finish_reason: str | None = None  # length | stop | abort | rejected
    aborted: bool = False
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = list(self.request.prompt_ids or ())
        if len(self.ids) != self.request.prompt_tokens:
            raise ValueError(
                f"request {self.request.id}: {len(self.ids)} prompt ids for "
                f"{self.request.prompt_tokens} prompt tokens"
            )

    @property
    def output_ids(self) -> list[int]:
        return self.ids[self.request.prompt_tokens :]
