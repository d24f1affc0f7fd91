"""Content addresses of KV blocks: each full block's hash chains its parent's, as vLLM's does.

Two blocks get the same hash only if every token up to and including them is the same, so a
hash names a whole prefix and the longest run of cached leading hashes is the reusable prefix.

Content comes from where the workload knows it:

* token ids (the real runtime): one id per token;
* Mooncake ``hash_ids``: one id per 512-token block of the trace's own tokenizer. A twin block
  of ``block_size`` tokens inside one Mooncake block is named by that id and its offset in it;
  a block straddling two Mooncake blocks by both ids. Only blocks the prompt fills completely
  are named; two requests sharing a Mooncake id are taken to share its tokens up to the shorter
  of their lengths (the trace says no more than that);
* nothing (length-only traces such as Azure or BurstGPT): no block is shared between
  requests. A preempted request can still find its own blocks again when it is recomputed,
  because its tokens are the same; those blocks get private hashes (``private_hashes``).

Hashes are Python's hash of int tuples, which is deterministic across runs (ints are not
salted); a 64-bit collision between two different prefixes is as unlikely as with vLLM's
default builtin hash.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.request import Request

MOONCAKE_BLOCK_TOKENS = 512
_ROOT = 0x9E3779B97F4A7C15  # the chain's seed: the hash "before" the first block
_PRIVATE = -1  # tags a private block so it never equals a content-named one


def content_hashes(
    content: Sequence[int], tokens_per_id: int, tokens: int, block_size: int
) -> list[int]:
    """Chained hashes of the full blocks of the first ``tokens`` tokens that ``content`` names."""
    covered = min(tokens, len(content) * tokens_per_id)
    out: list[int] = []
    h = _ROOT
    for j in range(covered // block_size):
        lo = j * block_size
        hi = lo + block_size
        if tokens_per_id == 1:
            key = tuple(content[lo:hi])
        else:
            key = (
                *content[lo // tokens_per_id : (hi - 1) // tokens_per_id + 1],
                lo % tokens_per_id,
            )
        h = hash((h, key))
        out.append(h)
    return out


def private_hashes(req: Request, n_blocks: int) -> list[int]:
    """The request's block hashes extended to ``n_blocks`` with hashes only it can match."""
    hashes = list(req.block_hashes or ())
    h = hashes[-1] if hashes else _ROOT
    for j in range(len(hashes), n_blocks):
        h = hash((h, _PRIVATE, req.id, j))
        hashes.append(h)
    return hashes


def attach_hashes(req: Request, block_size: int) -> None:
    """Name the request's shareable prompt blocks from its content (none without content)."""
    if req.content is None:
        return
    hashes = content_hashes(req.content, req.tokens_per_id, req.prompt_tokens, block_size)
    req.block_hashes = hashes
    req.shared_blocks = len(hashes)
