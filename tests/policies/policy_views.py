"""Hand-built engine states for policy tests."""

from policies import EngineView, KVCache, Request, Slo, Status


def make_view(
    model,
    waiting=(),
    running=(),
    kv=None,
    partition=None,
    in_flight=None,
    now=0.0,
    slo=Slo(),
):
    return EngineView(
        now=now,
        waiting=list(waiting),
        running=list(running),
        kv=kv or KVCache(20_000, 16),
        partition=partition or model.gpu.aggregated(),
        in_flight=in_flight or {},
        slo=slo,
        model=model,
        gpu=model.gpu,
    )


def decoding(rid, kv, ctx, out=200, generated=1):
    r = Request(rid, 0.0, ctx, out, generated=generated, kv_tokens=ctx, status=Status.RUNNING)
    kv.grow(rid, ctx)
    return r
