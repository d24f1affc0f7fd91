"""The decoder against Hugging Face's reference implementations, same config and weights."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gpu_runtime.attention import PagedAttention  # noqa: E402
from gpu_runtime.inputs import build_inputs  # noqa: E402
from gpu_runtime.kv import PagedKV  # noqa: E402
from gpu_runtime.model import LlamaModel  # noqa: E402
from gpu_runtime.weights import init_random, load_safetensors, to_hf_state_dict  # noqa: E402
from policies import Batch, KVCache, PrefillChunk, Request  # noqa: E402
from tests.gpu_runtime.tiny import tiny_llama, tiny_qwen3  # noqa: E402
from twin.errors import TwinError  # noqa: E402

TOL = dict(atol=2e-4, rtol=1e-4)


def hf_model(cfg, ours: LlamaModel):
    common = dict(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        vocab_size=cfg.vocab_size,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        attn_implementation="eager",
    )
    if cfg.model_type == "qwen3":
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common))
    else:
        config = transformers.LlamaConfig(rope_scaling=cfg.rope_scaling, **common)
        hf = transformers.LlamaForCausalLM(config)
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    assert not unexpected
    assert missing == (["lm_head.weight"] if cfg.tie_word_embeddings else [])
    head = ours.embed_tokens if cfg.tie_word_embeddings else ours.lm_head
    assert torch.equal(hf.get_output_embeddings().weight, head.weight)
    return hf.eval()


class Paged:
    """Our model plus a paged cache, fed batch by batch as the engine would."""

    def __init__(self, cfg, blocks: int = 64, block_size: int = 4, seed: int = 0) -> None:
        self.model = LlamaModel(cfg, 1024)
        init_random(self.model, seed)
        self.cache = KVCache(blocks, block_size)
        self.kv = PagedKV.allocate(cfg, blocks, block_size, torch.float32, torch.device("cpu"))
        self.attention = PagedAttention("torch", self.model.scale)
        self.tokens: dict[int, list[int]] = {}

    def run(self, batch: Batch) -> torch.Tensor:
        """Logits of every row (not just the sampled ones)."""
        for c in batch.prefill:
            self.cache.grow(c.request.id, c.start + c.length)
        for r in batch.decode:
            self.cache.grow(r.id, r.kv_tokens + 1)
        inputs = build_inputs(batch, self.cache, lambda r: self.tokens[r.id], torch.device("cpu"))
        hidden = self.model(
            inputs.input_ids, inputs.positions, inputs.meta, self.kv, self.attention
        )
        return self.model.logits(hidden)


def prompt(n: int, seed: int, vocab: int = 256) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(params=["llama", "qwen3"])
def pair(request):
    cfg = tiny_llama() if request.param == "llama" else tiny_qwen3()
    s = Paged(cfg)
    return s, hf_model(cfg, s.model)


def reference(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def test_full_prefill_matches_hf(pair):
    ours, hf = pair
    ids = prompt(40, 1)
    req = Request(0, 0.0, 40, 1, prompt_ids=ids)
    ours.tokens[0] = ids
    logits = ours.run(Batch(prefill=[PrefillChunk(req, 0, 40)]))
    torch.testing.assert_close(logits, reference(hf, ids), **TOL)


def test_chunked_prefill_matches_hf(pair):
    ours, hf = pair
    ids = prompt(37, 2)
    req = Request(0, 0.0, 37, 1, prompt_ids=ids)
    ours.tokens[0] = ids
    first = ours.run(Batch(prefill=[PrefillChunk(req, 0, 15)]))
    req.kv_tokens = 15
    second = ours.run(Batch(prefill=[PrefillChunk(req, 15, 22)]))
    torch.testing.assert_close(torch.cat((first, second)), reference(hf, ids), **TOL)


def test_paged_decode_in_mixed_batches_matches_hf(pair):
    """Two requests: one decodes step by step while the other prefills beside it in chunks."""
    ours, hf = pair
    a_ids, b_ids = prompt(21, 3), prompt(30, 4)
    a = Request(0, 0.0, 21, 8, prompt_ids=a_ids)
    b = Request(1, 0.0, 30, 1, prompt_ids=b_ids)
    ours.tokens = {0: list(a_ids), 1: b_ids}
    ours.run(Batch(prefill=[PrefillChunk(a, 0, 21)]))
    a.kv_tokens = 21
    b_start = 0
    for step in range(6):
        ours.tokens[0].append((7 * step + 5) % 256)  # the token decoded next
        chunk = [PrefillChunk(b, b_start, 5)] if b_start < 30 else []
        logits = ours.run(Batch(prefill=chunk, decode=[a]))
        want_a = reference(hf, ours.tokens[0])[-1]
        torch.testing.assert_close(logits[-1], want_a, **TOL)
        if chunk:
            want_b = reference(hf, b_ids[: b_start + 5])[b_start:]
            torch.testing.assert_close(logits[:5], want_b, **TOL)
            b_start += 5
            b.kv_tokens = b_start
        a.kv_tokens += 1


def test_safetensors_checkpoint_loads_into_the_same_model(tmp_path, qwen_cfg):
    from safetensors.torch import save_file

    src = Paged(qwen_cfg, seed=3).model
    save_file(to_hf_state_dict(src), str(tmp_path / "model.safetensors"))
    dst = LlamaModel(qwen_cfg, 1024)
    load_safetensors(dst, tmp_path)
    for (name, a), (_, b) in zip(src.named_parameters(), dst.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoint_problems_are_one_line_errors(tmp_path, llama_cfg):
    from safetensors.torch import save_file

    model = LlamaModel(llama_cfg, 64)
    with pytest.raises(TwinError, match="no \\*.safetensors"):
        load_safetensors(model, tmp_path)
    state = to_hf_state_dict(model)
    state.pop("model.norm.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(TwinError, match="1 tensors missing, e.g. 'model.norm.weight'"):
        load_safetensors(model, tmp_path)
    wider = LlamaModel(tiny_llama(hidden_size=128, num_heads=8, num_kv_heads=4), 64)
    with pytest.raises(TwinError, match="describe different models"):
        load_safetensors(wider, tmp_path)


def test_random_weights_are_seeded_and_keep_activations_finite(llama_cfg):
    a, b = Paged(llama_cfg, seed=5), Paged(llama_cfg, seed=5)
    deep = Paged(tiny_llama(num_layers=24), seed=5)
    ids = prompt(64, 6)
    logits = []
    for s in (a, b, deep):
        s.tokens[0] = ids
        logits.append(s.run(Batch(prefill=[PrefillChunk(Request(0, 0, 64, 1), 0, 64)])))
    assert torch.equal(logits[0], logits[1])
    assert torch.isfinite(logits[2]).all() and logits[2].abs().max() < 1e3
