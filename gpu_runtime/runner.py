"""The model side of the engine: weights, paged KV tensors, and one batch's forward + sampling."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gpu_runtime.attention import PagedAttention
from gpu_runtime.inputs import ForwardInputs, build_inputs
from gpu_runtime.jobs import Job
from gpu_runtime.kv import PagedKV
from gpu_runtime.model import LlamaModel
from gpu_runtime.sampling import sample
from policies import Batch, KVCache, Request


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        kv: PagedKV,
        backend: str,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.kv = kv
        self.backend = backend
        self.device = model.device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def attention(self, sms: int) -> PagedAttention:
        return PagedAttention(self.backend, self.model.scale, sms)

    def prepare(
        self, batch: Batch, cache: KVCache, job_of: Callable[[Request], Job]
    ) -> ForwardInputs:
        return build_inputs(batch, cache, lambda r: job_of(r).ids, self.device)

    def forward(self, inputs: ForwardInputs, sms: int) -> torch.Tensor:
        """Logits of the sampled rows, ``[n, vocab]`` fp32."""
        hidden = self.model(
            inputs.input_ids, inputs.positions, inputs.meta, self.kv, self.attention(sms)
        )
        return self.model.logits(hidden[inputs.sample_rows])

    def sample(self, logits: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
        for job in jobs:
            if job.sampling.seed is not None and job.generator is None:
                job.generator = torch.Generator(device=self.device)
                job.generator.manual_seed(job.sampling.seed)
        return sample(
            logits, [j.sampling for j in jobs], self.generator, [j.generator for j in jobs]
        )

    def run(self, batch: Batch, cache: KVCache, job_of: Callable[[Request], Job], sms: int):
        """Forward and sample ``batch``; returns the sampled ids (device tensor) in row order."""
        inputs = self.prepare(batch, cache, job_of)
        logits = self.forward(inputs, sms)
        return self.sample(logits, [job_of(r) for r in inputs.sampled])
