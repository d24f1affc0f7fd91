"""Token sampling: greedy, temperature and top-p, reproducible from seeds.

Draws use the exponential-race form of categorical sampling (argmax of p / E with
E ~ Exp(1)), which needs no host synchronisation, unlike ``torch.multinomial``'s checks. A
request with its own seed draws from its own generator, so its tokens do not depend on what
it was batched with; the others share the engine's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpu_runtime.inputs import to_device
from policies.numbers import check_number

# A 64-bit signed seed, as vLLM takes; torch's generators overflow beyond 2**64.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 is greedy
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        # Each field with its own bounds: a seed spans int64, beyond check_fields' default cap.
        if self.seed is not None:
            check_number(self.seed, "seed", integer=True, low=SEED_MIN, high=SEED_MAX)
        check_number(self.temperature, "temperature", low=0.0, high=100.0)
        check_number(self.top_p, "top_p", low=0.0, low_open=True, high=1.0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero every token outside the smallest set whose mass reaches ``top_p`` (per row)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of strictly more likely tokens
    sorted_p = sorted_p.masked_fill(before >= top_p[:, None], 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generator: torch.Generator | None,
    row_generators: list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` ``[n, vocab]`` (fp32), as an int64 tensor."""
    greedy = logits.argmax(dim=-1)
    if all(p.greedy for p in params):
        return greedy
    device = logits.device
    temps = to_device(torch.tensor([p.temperature or 1.0 for p in params]), device)
    probs = torch.softmax(logits / temps[:, None], dim=-1)
    if any(p.top_p < 1.0 for p in params):
        probs = top_p_filter(probs, to_device(torch.tensor([p.top_p for p in params]), device))
    noise = torch.empty_like(probs)
    if not row_generators or all(g is None for g in row_generators):
        noise.exponential_(generator=generator)
    else:
        for i, gen in enumerate(row_generators):
            noise[i].exponential_(generator=gen if gen is not None else generator)
    drawn = (probs / noise).argmax(dim=-1)
    is_greedy = to_device(torch.tensor([p.greedy for p in params]), device)
    return torch.where(is_greedy, greedy, drawn)
