"""Request limits the HTTP server enforces before a handler runs (ASGI middleware) and their values."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from .. import defaults


@dataclass(frozen=True)
class Limits:
    max_k: int = defaults.HTTP_MAX_K
    max_batch: int = defaults.HTTP_MAX_BATCH  # queries per search request, documents/ids per write request
    max_body_bytes: int = defaults.HTTP_MAX_BODY_BYTES
    max_query_chars: int = defaults.HTTP_MAX_QUERY_CHARS


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` (by Content-Length, and while streaming)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _json_error(send, 413, f"request body over the {self.max_bytes:,}-byte limit")
        if length is not None:
            return await self.app(scope, receive, send)
        # No Content-Length (chunked): read the body here, within the limit, then replay it, so an
        # oversized body gets a 413 before any handler starts parsing it.
        chunks, seen, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return await self.app(scope, receive, send)  # client went away: let the app see it
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await _json_error(send, 413, f"request body over the {self.max_bytes:,}-byte limit")
            more = msg.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _json_error(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
