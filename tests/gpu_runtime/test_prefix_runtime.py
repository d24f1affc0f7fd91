"""The runtime shares cached prefix blocks in its paged KV (no copy); a hit changes no logit."""

import pytest

torch = pytest.importorskip("torch")

from gpu_runtime.attention import PagedAttention  # noqa: E402
from gpu_runtime.build import build_runtime  # noqa: E402
from gpu_runtime.config import RuntimeConfig  # noqa: E402
from gpu_runtime.inputs import build_inputs  # noqa: E402
from gpu_runtime.kv import PagedKV  # noqa: E402
from gpu_runtime.model import LlamaModel  # noqa: E402
from gpu_runtime.replay import replay  # noqa: E402
from gpu_runtime.weights import init_random  # noqa: E402
from policies import Batch, KVCache, PrefillChunk, Request  # noqa: E402
from policies.block_hash import attach_hashes  # noqa: E402
from policies.prefix_cache import PrefixKVCache  # noqa: E402
from tests.gpu_runtime.test_parity import shared_prefixes  # noqa: E402
from tests.gpu_runtime.tiny import tiny_llama  # noqa: E402

BS = 4


class Model:
    """The tiny model over a paged cache, fed as the engine feeds it."""

    def __init__(self, cache: KVCache) -> None:
        cfg = tiny_llama()
        self.model = LlamaModel(cfg, 256)
        init_random(self.model, 0)
        self.cache = cache
        self.kv = PagedKV.allocate(cfg, cache.num_blocks, BS, torch.float32, torch.device("cpu"))
        self.attention = PagedAttention("torch", self.model.scale)
        self.tokens: dict[int, list[int]] = {}

    def prefill(self, req: Request) -> torch.Tensor:
        """Admit ``req`` (reusing its cached prefix) and prefill the rest; every row's logits."""
        start = self.cache.budget().prefix_hit(req)
        self.cache.admit(req, start)
        self.cache.grow(req.id, req.prompt_tokens)
        self.cache.commit(req, req.prompt_tokens)
        self.tokens[req.id] = list(req.prompt_ids)
        chunk = PrefillChunk(req, start, req.prompt_tokens - start)
        inputs = build_inputs(
            Batch(prefill=[chunk]), self.cache, lambda r: self.tokens[r.id], torch.device("cpu")
        )
        with torch.no_grad():
            hidden = self.model(
                inputs.input_ids, inputs.positions, inputs.meta, self.kv, self.attention
            )
            return self.model.logits(hidden)


def request(rid: int, ids: list[int]) -> Request:
    r = Request(rid, 0.0, len(ids), 4, prompt_ids=ids)
    r.content, r.tokens_per_id = tuple(ids), 1
    attach_hashes(r, BS)
    return r


def test_logits_are_the_same_with_and_without_a_prefix_hit():
    gen = torch.Generator().manual_seed(3)
    system = torch.randint(0, 256, (18,), generator=gen).tolist()
    first = system + torch.randint(0, 256, (5,), generator=gen).tolist()
    second = system + torch.randint(0, 256, (7,), generator=gen).tolist()

    cached = Model(PrefixKVCache(32, BS))
    cached.prefill(request(1, first))
    hit_logits = cached.prefill(request(2, second))
    # Four full blocks of the system prompt are reused in place: the same block ids, no copy.
    assert cached.cache.block_table(2)[:4] == cached.cache.block_table(1)[:4]
    assert hit_logits.shape[0] == len(second) - 16

    fresh = Model(KVCache(32, BS))
    cold_logits = fresh.prefill(request(2, second))
    torch.testing.assert_close(hit_logits, cold_logits[16:], atol=1e-5, rtol=1e-5)


def test_greedy_outputs_do_not_change_when_prefix_caching_is_on():
    outputs = {}
    for caching in (True, False):
        rt = build_runtime(
            tiny_llama(),
            RuntimeConfig(device="cpu", num_kv_blocks=24, block_size=16),
            "vllm",
            {"max_num_batched_tokens": 128, "enable_prefix_caching": caching},
            virtual_clock=True,
        )
        result = replay(rt, shared_prefixes())
        outputs[caching] = [rt.engine.jobs[i].output_ids for i in range(len(rt.engine.jobs))]
        if caching:
            assert result.summary["prefix_hit_tokens"] > 0
    assert outputs[True] == outputs[False]
