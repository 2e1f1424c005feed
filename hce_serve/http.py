"""HTTP API over an ``Engine`` (FastAPI). ``create_app`` builds it; ``hce-serve http`` runs it with uvicorn.

Endpoints: ``GET /healthz``, ``GET /stats``, ``GET /search?q=&k=``, ``POST /search`` (one query or a batch),
``POST /documents`` (add or replace), ``DELETE /documents/{id}``, ``POST /documents/delete``; OpenAPI at
``/docs``. Every error is a 4xx with ``{"detail": "<one line>"}``. Request bodies, batch sizes and ``k``
are bounded; writes need ``Authorization: Bearer <token>`` when a token is configured, and a write is
answered only after its mutation-log record is on disk. Handlers are plain ``def`` so FastAPI runs them
in its thread pool: searches run in parallel (hnswlib releases the GIL), writes one at a time.
"""

# No "from __future__ import annotations": FastAPI must see the request models (local classes) as real types.

import hmac
import ipaddress
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from .beir import Document
from .errors import DataError, HCEError, missing_dependency

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_k: int = 1000
    max_batch: int = 256  # queries per search request, documents/ids per write request
    max_body_bytes: int = 8 * 2**20
    max_query_chars: int = 20_000  # the encoder truncates to its max length anyway; this bounds tokenizing


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _BodyLimit:
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


def create_app(engine: Any, token: str | None = None, limits: Limits | None = None, save_on_shutdown: bool = True) -> Any:
    """A FastAPI app serving ``engine`` (an ``hce_serve.engine.Engine``)."""
    try:
        from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from pydantic import BaseModel, Field
    except ImportError:
        raise missing_dependency("fastapi", "serve") from None
    lim = limits or Limits()

    class SearchBody(BaseModel):
        query: str | None = Field(None, description="One query (answer: hits).")
        queries: list[str] | None = Field(None, description="A batch of queries (answer: results).")
        k: int = Field(10, description=f"Hits per query, 1..{lim.max_k}.")

    class DocumentIn(BaseModel):
        id: str = Field(alias="_id")
        title: str = ""
        text: str = ""

    class DocumentsBody(BaseModel):
        documents: list[DocumentIn]

    class IdsBody(BaseModel):
        ids: list[str]

    @asynccontextmanager
    async def lifespan(app: Any):  # noqa: ANN202 - FastAPI's own protocol
        yield
        if save_on_shutdown and engine.store.writable:
            engine.store.save()

    app = FastAPI(title="HCE search", version=_version(), lifespan=lifespan,
                  description="Dense retrieval over an HCE index folder.")
    app.add_middleware(_BodyLimit, max_bytes=lim.max_body_bytes)

    @app.exception_handler(HCEError)
    async def _hce_error(request: Request, exc: HCEError) -> Any:
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Any:
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    def need_write(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        if not engine.store.writable:
            raise HTTPException(403, "this server is read-only")
        if token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not authorization or not authorization.startswith("Bearer ") or not hmac.compare_digest(given, token):
            raise HTTPException(401, "write endpoints need 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    def check_batch(n: int, what: str) -> None:
        if n == 0:
            raise DataError(f"no {what} given")
        if n > lim.max_batch:
            raise DataError(f"{n:,} {what} in one request; the limit is {lim.max_batch:,}")

    def run_search(texts: list[str], k: int) -> list[list[dict[str, Any]]]:
        for t in texts:
            if isinstance(t, str) and len(t) > lim.max_query_chars:
                raise DataError(f"query of {len(t):,} characters; the limit is {lim.max_query_chars:,}")
        hits = engine.search(texts, k=k, max_k=lim.max_k)
        return [[{"id": d, "score": s} for d, s in row] for row in hits]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "live": len(engine.index)}

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return engine.stats()

    @app.get("/search")
    def search_get(q: str = Query(..., description="Query text"), k: int = 10) -> dict[str, Any]:
        return {"hits": run_search([q], k)[0]}

    @app.post("/search")
    def search_post(body: SearchBody) -> dict[str, Any]:
        if (body.query is None) == (body.queries is None):
            raise DataError("give exactly one of 'query' or 'queries'")
        if body.query is not None:
            return {"hits": run_search([body.query], body.k)[0]}
        check_batch(len(body.queries), "queries")
        return {"results": [{"hits": h} for h in run_search(body.queries, body.k)]}

    @app.post("/documents", dependencies=[Depends(need_write)])
    def add_documents(body: DocumentsBody) -> dict[str, Any]:
        check_batch(len(body.documents), "documents")
        docs = [Document(d.id, d.title, d.text) for d in body.documents]
        for d in docs:
            if not d.full_text.strip():
                raise DataError(f"document {d.id!r} has empty title and text")
        res = engine.add_documents(docs)
        return {"added": res.added, "replaced": res.replaced, "live": len(engine.index)}

    @app.delete("/documents/{doc_id}", dependencies=[Depends(need_write)])
    def delete_one(doc_id: str) -> dict[str, Any]:
        res = engine.delete([doc_id])
        if res.missing:
            raise HTTPException(404, f"document {doc_id!r} is not in the index")
        return {"deleted": res.deleted, "missing": [], "live": len(engine.index)}

    @app.post("/documents/delete", dependencies=[Depends(need_write)])
    def delete_many(body: IdsBody) -> dict[str, Any]:
        check_batch(len(body.ids), "ids")
        res = engine.delete(body.ids)
        return {"deleted": res.deleted, "missing": res.missing, "live": len(engine.index)}

    return app


def _version() -> str:
    from . import __version__

    return __version__
