"""vllm and sglang against the servers' documented scheduling rules, one test per rule."""

import pytest

import policies
from policies import EngineView, KVCache, Lane, Request, Slo, Status
from policies.block_hash import attach_hashes
from policies.prefix_cache import PrefixKVCache

BS = 16


@pytest.fixture(scope="module")
def model():
    from profiler import DatasheetModel, load_model_config

    return DatasheetModel(load_model_config("llama-3.1-8b"))


def view(model, kv, waiting=(), running=(), decode_steps=0):
    return EngineView(
        now=0.0,
        waiting=list(waiting),
        running=list(running),
        kv=kv,
        partition=model.gpu.aggregated(),
        in_flight={},
        slo=Slo(),
        model=model,
        gpu=model.gpu,
        decode_steps=decode_steps,
    )


def decoding(rid, kv, ctx, out=200, generated=1, prompt=None):
    r = Request(rid, 0.0, prompt or ctx, out, generated=generated, kv_tokens=ctx)
    r.status = Status.RUNNING
    kv.grow(rid, ctx)
    return r


# ----------------------------------------------------------------------------- vllm
def test_vllm_defaults_follow_the_openai_server_on_a_large_gpu():
    p = policies.get("vllm").params
    assert (p.max_num_batched_tokens, p.max_num_seqs) == (8192, 1024)
    assert p.enable_prefix_caching and p.watermark == 0.01


def test_vllm_watermark_refuses_admission_at_the_threshold(model):
    kv = KVCache(1000, BS)  # watermark: 10 blocks
    running = [decoding(0, kv, 16 * 489)]  # 489 blocks held, one decode this step
    # The decode takes block 490; 510 stay free, and the watermark keeps 10 of them.
    fits = Request(1, 0.0, 16 * 500, 5)
    over = Request(2, 0.0, 16 * 500 + 1, 5)
    pol = policies.get("vllm")
    batch = pol.next_batch(view(model, kv, [fits], running), Lane.MIXED)
    assert [c.request.id for c in batch.prefill] == [1]
    batch = pol.next_batch(view(model, kv, [over], running), Lane.MIXED)
    assert batch.prefill == [] and [r.id for r in batch.decode] == [0]
    # Without the watermark the larger prompt fits too.
    batch = policies.get("vllm", watermark=0.0).next_batch(
        view(model, kv, [over], running), Lane.MIXED
    )
    assert [c.request.id for c in batch.prefill] == [2]


def test_vllm_watermark_does_not_hold_back_an_idle_engine(model):
    kv = KVCache(100, BS)
    alone = Request(1, 0.0, 16 * 100 - 1, 1)  # every block, nothing else scheduled
    batch = policies.get("vllm", watermark=0.5).next_batch(view(model, kv, [alone]), Lane.MIXED)
    assert [c.request.id for c in batch.prefill] == [1]


def test_vllm_preempts_the_last_admitted_and_admits_no_one_that_step(model):
    kv = KVCache(10, BS)
    running = [decoding(i, kv, 32) for i in range(5)]  # every block held, all at a boundary
    waiting = [Request(9, 0.0, 10, 5)]
    batch = policies.get("vllm").next_batch(view(model, kv, waiting, running), Lane.MIXED)
    assert [r.id for r in batch.preempt] == [4, 3]
    assert [r.id for r in batch.decode] == [0, 1, 2] and batch.prefill == []


def test_vllm_reuses_the_cached_prefix_and_prefills_the_rest(model):
    kv = PrefixKVCache(200, BS)
    first = Request(1, 0.0, 100, 5)
    first.content, first.tokens_per_id = tuple(range(100)), 1
    attach_hashes(first, BS)
    kv.admit(first, 0)
    kv.grow(1, 100)
    kv.commit(first, 100)
    kv.free(1)
    again = Request(2, 0.0, 120, 5)
    again.content, again.tokens_per_id = (*range(100), *range(20)), 1
    attach_hashes(again, BS)
    batch = policies.get("vllm").next_batch(view(model, kv, [again]), Lane.MIXED)
    assert [(c.start, c.length) for c in batch.prefill] == [(96, 24)]
    assert batch.shape().prefill_ctx == (96,)  # attention still reads the cached prefix
    off = policies.get("vllm", enable_prefix_caching=False)
    plain = KVCache(200, BS)
    assert [
        (c.start, c.length) for c in off.next_batch(view(model, plain, [again]), Lane.MIXED).prefill
    ] == [(0, 120)]


# ----------------------------------------------------------------------------- sglang
def test_sglang_new_token_ratio_decays_per_decode_step_to_its_floor(model):
    pol = policies.get("sglang")
    kv = KVCache(10, BS)
    assert pol.new_token_ratio(view(model, kv)) == pytest.approx(0.7)
    assert pol.new_token_ratio(view(model, kv, decode_steps=300)) == pytest.approx(
        0.7 - 300 * (0.7 - 0.098) / 600
    )
    assert pol.new_token_ratio(view(model, kv, decode_steps=600)) == pytest.approx(0.098)
    assert pol.new_token_ratio(view(model, kv, decode_steps=5000)) == pytest.approx(0.098)


def test_sglang_admits_once_the_ratio_has_decayed_enough(model):
    kv = KVCache(1000, BS)  # 16000 tokens
    running = [decoding(i, kv, 160, out=4001) for i in range(4)]  # 40 blocks, 4000 left each
    waiting = [Request(9, 0.0, 6000, 100)]
    # Room: 960 free blocks x 16 = 15360 tokens, less ratio x 16000 reserved for the
    # running outputs; the prompt asks 6000 + 100.
    pol = policies.get("sglang")
    batch = pol.next_batch(view(model, kv, waiting, running), Lane.MIXED)
    assert batch.prefill == [] and len(batch.decode) == 4  # 0.7 x 16000 leaves 4160
    # The decode run is promised only until the decaying ratio could let the prompt in.
    steps = batch.steady_steps
    assert 1 < steps < 600
    before = pol.next_batch(view(model, kv, waiting, running, decode_steps=steps - 1), Lane.MIXED)
    assert before.prefill == []
    batch = pol.next_batch(view(model, kv, waiting, running, decode_steps=600), Lane.MIXED)
    assert [c.request.id for c in batch.prefill] == [9]  # 0.098 x 16000 leaves 13792


def test_sglang_retracts_fewest_generated_first_until_20_tokens_each_fit(model):
    kv = KVCache(12, BS)
    # Four requests at a block boundary: the next decode needs 4 blocks, 0 are free.
    a = decoding(0, kv, 48, out=100, generated=40)
    b = decoding(1, kv, 48, out=100, generated=5, prompt=40)
    c = decoding(2, kv, 48, out=100, generated=5, prompt=43)
    d = decoding(3, kv, 48, out=100, generated=30)
    pol = policies.get("sglang")
    batch = pol.next_batch(view(model, kv, [], [a, b, c, d], decode_steps=100), Lane.MIXED)
    # c (5 generated, longer prompt) goes first, then b; the other two then need 2 blocks
    # for 20 more tokens each, and 6 are free.
    assert [r.id for r in batch.preempt] == [2, 1]
    assert [r.id for r in batch.decode] == [0, 3]
    ratio = (40 + 30 + 20 * 2) / 200
    assert pol.new_token_ratio(view(model, kv, decode_steps=100)) == pytest.approx(ratio)
    assert pol.new_token_ratio(view(model, kv, decode_steps=110)) == pytest.approx(
        ratio - 10 * pol.params.decay
    )


def test_sglang_reserves_the_clipped_output_of_each_admitted_request(model):
    kv = KVCache(101, BS)  # 1616 tokens: 16 of them held by a running request
    running = decoding(9, kv, 16, out=1)  # its clipped output (1 token) is set aside too
    long_out = Request(1, 0.0, 100, 1500)
    short_out = Request(2, 0.0, 100, 10)
    sglang = policies.get("sglang")
    # 100 + 1500 fills the room, so the first prompt waits and nothing is admitted.
    assert sglang.prefill_batch(view(model, kv, [long_out, short_out], [running])) is None
    batch = sglang.prefill_batch(view(model, kv, [short_out, long_out], [running]))
    assert [c.request.id for c in batch.prefill] == [2]


def test_sglang_admits_a_request_that_fits_an_engine_holding_nothing_else(model):
    """A deviation: SGLang would leave it waiting for a reserve that never frees (twin's engine
    accepted it, since its KV fits), so with nothing else running it is admitted."""
    kv = KVCache(100, BS)
    long_out = Request(1, 0.0, 100, 1500)
    batch = policies.get("sglang").next_batch(view(model, kv, [long_out]), Lane.MIXED)
    assert [c.request.id for c in batch.prefill] == [1]


@pytest.mark.parametrize(
    "name, args, word",
    [
        ("vllm", {"watermark": "nan"}, "watermark"),
        ("vllm", {"watermark": "1"}, "watermark"),
        ("vllm", {"enable_prefix_caching": "maybe"}, "enable_prefix_caching"),
        ("sglang", {"init_new_token_ratio": "inf"}, "init_new_token_ratio"),
        ("sglang", {"retract_decode_steps": "0"}, "retract_decode_steps"),
    ],
)
def test_bad_baseline_parameters_are_one_line_errors(name, args, word):
    with pytest.raises(policies.PolicyError) as err:
        policies.get(name, **args)
    assert word in str(err.value) and "\n" not in str(err.value)
