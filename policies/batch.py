"""The work of one forward pass on one lane, and its summary for a latency model."""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

from policies.request import Request

# A decode-only batch the policy would repeat until something changes: the engine decides how
# many iterations actually pass before an arrival, a finish or a KV shortage intervenes.
UNTIL_CHANGE = 1 << 30

_kv_tokens = attrgetter("kv_tokens")
_start = attrgetter("start")
_length = attrgetter("length")


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What a latency model needs to know about a batch (no request objects).

    ``prefill_q``/``prefill_ctx`` are each chunk's new tokens and cached tokens before it;
    ``decode_ctx_sum`` sums the context every decode request attends to (cached + new token).
    ``sampled`` counts sequences that sample a token (lm_head rows).
    """

    prefill_q: tuple[int, ...] = ()
    prefill_ctx: tuple[int, ...] = ()
    n_decode: int = 0
    decode_ctx_sum: int = 0
    sampled: int = 0

    @property
    def prefill_tokens(self) -> int:
        return sum(self.prefill_q)

    @property
    def tokens(self) -> int:
        return sum(self.prefill_q) + self.n_decode

    @property
    def is_empty(self) -> bool:
        return not self.prefill_q and self.n_decode == 0

    @staticmethod
    def decode(n_decode: int, decode_ctx_sum: int) -> BatchShape:
        return _decode_shape(n_decode, decode_ctx_sum)

    @staticmethod
    def prefill(q: int, ctx: int = 0, completes: bool = True) -> BatchShape:
        return BatchShape(prefill_q=(q,), prefill_ctx=(ctx,), sampled=int(completes))


# A frozen dataclass sets each field through ``object.__setattr__``; the slots' own setters
# fill a decode shape in a third of the time (0.35 against 0.9 us), and the simulator builds
# one for every batch and every segment of a decode phase.
_new_shape = object.__new__
_set_q, _set_ctx, _set_n, _set_sum, _set_sampled = (
    BatchShape.__dict__[name].__set__
    for name in ("prefill_q", "prefill_ctx", "n_decode", "decode_ctx_sum", "sampled")
)


def _decode_shape(n_decode: int, decode_ctx_sum: int) -> BatchShape:
    """``BatchShape(n_decode=n, decode_ctx_sum=c, sampled=n)``, field for field."""
    shape = _new_shape(BatchShape)
    _set_q(shape, ())
    _set_ctx(shape, ())
    _set_n(shape, n_decode)
    _set_sum(shape, decode_ctx_sum)
    _set_sampled(shape, n_decode)
    return shape


@dataclass(frozen=True, slots=True)
class ArrivalAdmission:
    """How a policy's steps go while every running request decodes or prefills its prompt in
    chunks: each step takes every decode's next token, then the next chunk of each prompt
    being prefilled (in admission order, while the ``token_budget`` left after the decodes
    lasts), then the queue's requests first come first served, each with a first chunk of its
    prompt up to the budget left, while a sequence of ``max_seqs`` is free and its blocks fit
    leaving ``reserve_blocks`` free; the first that does not fit stops the admissions. A step
    whose decodes' or chunks' blocks do not fit preempts, and a queued request whose prefix the
    KV cache may hold (one with block hashes, under prefix caching) is not covered: there the
    policy must be asked. Carried by ``Batch.admits_arrivals``.
    """

    token_budget: int
    max_seqs: int
    reserve_blocks: int = 0


@dataclass(slots=True)
class PrefillChunk:
    request: Request
    start: int
    length: int

    @property
    def completes(self) -> bool:
        return self.start + self.length >= self.request.prefill_target


# ``PrefillChunk.completes`` as a plain function, for C-level maps over a batch's chunks.
chunk_completes = PrefillChunk.completes.fget


@dataclass(slots=True)
class Batch:
    """Prefill chunks and decode requests for one forward pass, plus preemptions to apply first.

    ``steady_steps`` is the policy's promise: it would return this same decode-only batch (and
    the same partition) for that many consecutive iterations if nothing changed but time and
    these requests' own decode progress: no arrival, finish, preemption, KV shortage or
    change on another lane. Engines may run that many iterations at once (the simulator does);
    the runtime asks again every iteration and must get the same answer.

    ``through_arrivals`` widens the promise for a decode lane of a split partition: while the
    prefill lane is busy, an arrival changes neither this batch nor the partition (the arrival
    only waits in the queue), so the promise lasts until the prefill lane's batch ends.

    ``arrivals_queue`` widens it on one lane for a policy whose queue's head cannot be admitted
    before the promise ends: an arrival joins the queue behind that head, so the promise holds
    through arrivals.

    ``then`` is a promise about the steps after a batch with prefill chunks: the steady
    decode batch (``steady_steps`` and all) the policy would return next if nothing changed
    but this batch's own progress. Engines may run both as one (the simulator does).

    ``past_finishes`` widens a steady promise past its requests' finishes: when some finish,
    the batch of the rest is steady with the same promise (nothing else runs or waits).

    ``admits_arrivals`` widens a steady promise through arrivals and finishes
    (``ArrivalAdmission``): the policy's batch at every step boundary while the rule holds
    follows from the rule. Engines may run all of it as one (the simulator does, within its
    exact count of the KV blocks).
    """

    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[Request] = field(default_factory=list)
    preempt: list[Request] = field(default_factory=list)
    steady_steps: int = 1
    through_arrivals: bool = False
    arrivals_queue: bool = False
    then: Batch | None = None
    past_finishes: bool = False
    admits_arrivals: ArrivalAdmission | None = None

    @property
    def is_empty(self) -> bool:
        return not self.prefill and not self.decode

    @property
    def prefill_tokens(self) -> int:
        return sum(c.length for c in self.prefill)

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + len(self.decode)

    def shape(self) -> BatchShape:
        # C-level maps rather than generators: called for every batch of a simulation.
        prefill, decode = self.prefill, self.decode
        n = len(decode)
        ctx = sum(map(_kv_tokens, decode)) + n
        if not prefill:  # most batches: a decode step of every running request
            return _decode_shape(n, ctx)
        return BatchShape(
            prefill_q=tuple(map(_length, prefill)),
            prefill_ctx=tuple(map(_start, prefill)),
            n_decode=n,
            decode_ctx_sum=ctx,
            sampled=n + sum(map(chunk_completes, prefill)),
        )

    def describe(self) -> tuple:
        """A hashable summary of the decision, for comparing engines step by step."""
        return (
            tuple((c.request.id, c.start, c.length) for c in self.prefill),
            tuple(r.id for r in self.decode),
            tuple(r.id for r in self.preempt),
        )
