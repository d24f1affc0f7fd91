"""Why an engine refuses a request at arrival: one rule, one set of reasons, for both engines.

A refused request never runs; its record says why, the summary counts each reason, and it
counts as a miss of both SLOs.
"""

from __future__ import annotations

from policies.request import Request, Status

KV_CAPACITY = "kv_capacity"  # its prompt and output would never fit in the whole KV cache
CONTEXT_LENGTH = "context_length"  # prompt + output beyond the model's positions
REASONS = {
    KV_CAPACITY: "its prompt and output need more KV cache than the engine has",
    CONTEXT_LENGTH: "its prompt and output exceed the model's context length",
}


def rejection_reason(
    prompt_tokens: int, output_tokens: int, kv_capacity_tokens: int, max_model_len: int | None
) -> str | None:
    """The reason a request can never run, or None when it can."""
    if max_model_len is not None and prompt_tokens + output_tokens > max_model_len:
        return CONTEXT_LENGTH
    # The last output token is sampled, never written to the cache.
    if prompt_tokens + output_tokens - 1 > kv_capacity_tokens:
        return KV_CAPACITY
    return None


def reject(request: Request, reason: str) -> None:
    request.status = Status.REJECTED
    request.reject_reason = reason
