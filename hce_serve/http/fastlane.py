"""The fast lane: ``POST /search`` answered by a thin ASGI middleware instead of FastAPI's routing.

A search request's HTTP work is what the server pays for besides the model, and FastAPI's per-request
machinery (routing, dependency solving, its own body parsing) costs about as much as the rest of that work
together. The lane parses the body with orjson and validates it with the route's own request model, then
answers from the same function the route calls. Anything it does not take goes on to the app unchanged:
another path or method, a body without a JSON content type or a Content-Length, and a body that orjson or
the model refuses (the app then answers it, with its usual 422 or 400, from the same bytes). So the answers
are the route's, and ``/docs`` still documents the route.

It is added as the app's innermost user middleware, inside ``BodyLimit``: oversized bodies are refused
before it reads them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .wire import orjson

JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")


class NotMine(Exception):  # noqa: N818 - a signal, not an error
    """Raised by the lane's handler for a body the app must answer (its model refused it)."""


class SearchLane:
    """ASGI middleware: ``handle(parsed JSON)`` answers ``POST path`` as (status, body); ``NotMine`` or a
    body that is not plain JSON replays the request to the app."""

    def __init__(self, app: Any, handle: Callable[[Any], Awaitable[tuple[int, bytes]]], path: str = "/search") -> None:
        self.app, self.handle, self.path = app, handle, path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST" or not _json(scope):
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            status, answer = await self.handle(orjson.loads(body))
        except (NotMine, orjson.JSONDecodeError):
            return await self.app(scope, _replay(body, receive), send)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})


def _json(scope: dict) -> bool:
    headers = dict(scope.get("headers") or ())
    return headers.get(b"content-type", b"").lower() in JSON_TYPES and b"content-length" in headers


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def again() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    return again
