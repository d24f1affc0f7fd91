"""Greedy, temperature and top-p sampling, and reproducibility from seeds."""

import pytest

torch = pytest.importorskip("torch")

from gpu_runtime.sampling import SamplingParams, sample, top_p_filter  # noqa: E402


def logits(n=3, vocab=50, seed=0):
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    x = logits()
    got = sample(x, [SamplingParams()] * 3, torch.Generator())
    assert torch.equal(got, x.argmax(-1))


def test_temperature_sampling_follows_the_softmax():
    x = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    got = sample(x, [SamplingParams(temperature=0.7)] * len(x), gen)
    freq = torch.bincount(got, minlength=4).float() / len(x)
    torch.testing.assert_close(freq, torch.softmax(x[0] / 0.7, -1), atol=0.015, rtol=0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p_filter(probs, torch.tensor([0.75]))
    assert torch.equal(kept, probs * torch.tensor([1.0, 1.0, 0.0, 0.0]))
    kept = top_p_filter(probs, torch.tensor([0.1]))
    assert torch.equal(kept, probs * torch.tensor([1.0, 0.0, 0.0, 0.0]))
    gen = torch.Generator().manual_seed(1)
    x = torch.log(probs).repeat(2000, 1)
    got = sample(x, [SamplingParams(temperature=1.0, top_p=0.75)] * len(x), gen)
    assert set(got.tolist()) == {0, 1}


def test_seeded_requests_draw_the_same_tokens_whatever_they_are_batched_with():
    x = logits(4, seed=2)
    params = [SamplingParams(1.0, seed=7), SamplingParams(1.0), SamplingParams()]
    params.append(SamplingParams(1.0))

    def draw(rows):
        gens = []
        for p in (params[i] for i in rows):
            g = None
            if p.seed is not None:
                g = torch.Generator().manual_seed(p.seed)
            gens.append(g)
        return sample(x[rows], [params[i] for i in rows], torch.Generator(), gens)

    alone = [int(draw([0])[0]) for _ in range(3)]
    batched = int(draw([3, 1, 0, 2])[2])
    assert alone[0] == alone[1] == alone[2] == batched
    assert int(draw([2])[0]) == int(x[2].argmax())


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
