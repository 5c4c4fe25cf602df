"""What every inference endpoint of the server shares, below the protocols: a refusal (status, the reason it
is counted under, the detail), the JSON error that carries it, and the request body read under a size limit
and a time limit, straight from ASGI's ``receive``."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import ClientDisconnect
from starlette.responses import Response


def error_response(status: int, detail: str, headers: dict[str, str] | None = None, *, key: str = "detail"
                   ) -> Response:
    """A JSON error: ``{"detail": ...}`` (askexpert's /v1) or ``{"error": ...}`` (the Open Inference Protocol)."""
    return Response(json.dumps({key: detail}), status_code=status, media_type="application/json", headers=headers)



class Refusal(Exception):
    """The infer endpoint's answer instead of the expert's: the HTTP status, the reason it is counted under
    in ``askexpert_errors_total`` (None: not counted), the detail the client reads, and extra headers."""

    def __init__(self, status: int, reason: str | None, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers


CLOSE = {"Connection": "close"}  # a body refused before it was read whole: the connection cannot be reused


async def read_body(receive, declared: str | None, limit: int, timeout_s: float) -> bytes:
    """The request's body, refused as soon as it is known to be over ``limit`` bytes (from Content-Length
    ``declared`` before reading, else while it streams) or when it has not arrived whole within ``timeout_s``;
    :class:`ClientDisconnect` when the client goes away before it has sent it."""
    if declared is not None:
        if not declared.isdigit():
            raise Refusal(400, "bad_body", f"Content-Length must be a non-negative integer, got {declared[:40]!r}",
                          CLOSE)
        if int(declared) > limit:
            raise Refusal(413, "too_large", f"a body of {declared} bytes is over this expert's limit of {limit} "
                          "bytes: send fewer images a request", CLOSE)

    async def collect() -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refusal(413, "too_large", f"the body is over this expert's limit of {limit} bytes: send fewer "
                              "images a request", CLOSE)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    try:
        if hasattr(asyncio, "timeout"):  # Python 3.11+: a deadline on this task, no task of its own
            async with asyncio.timeout(timeout_s):
                return await collect()
        return await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise Refusal(408, "body_timeout", f"the body did not arrive within {timeout_s:g} s", CLOSE) from None
