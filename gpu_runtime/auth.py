"""``--api-key``: the ``/v1`` endpoints want ``Authorization: Bearer KEY``, as vLLM's.

A plain ASGI middleware (not a per-route dependency or Starlette's BaseHTTPMiddleware), so
streaming responses and disconnect detection pass through it untouched. ``/health`` and
``/metrics`` stay open for probes and scrapers.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi.responses import JSONResponse

from gpu_runtime.protocol import ApiError


class ApiKeyMiddleware:
    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/v1")
            and scope.get("method") != "OPTIONS"
        ):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = ApiError(
                    401,
                    "missing or wrong API key: send the header Authorization: Bearer KEY",
                    kind="authentication_error",
                )
                headers = {"WWW-Authenticate": "Bearer"}
                await JSONResponse(error.body(), 401, headers=headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
