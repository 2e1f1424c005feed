"""HTTP API over an ``Engine`` (FastAPI). ``create_app`` builds it; ``hce-serve http`` runs it with uvicorn.

Endpoints: ``GET /healthz``, ``GET /stats``, ``GET /search?q=&k=&ef=&fields=``, ``POST /search`` (one query
or a batch, with ``filter``, ``ef``, ``subtree``, ``fields``), ``GET /documents/{id}``, ``POST /documents``
(add or replace), ``DELETE /documents/{id}``, ``POST /documents/delete``; OpenAPI at ``/docs``; the search
page at ``/`` with ``GET /facets`` and ``GET /search/options`` (``page.py``).

Errors are JSON ``{"detail": "<one line>"}``: 4xx for a bad request (the client can fix it), 5xx for a
fault of the server (a corrupt file, an onnxruntime failure), logged with its traceback. Request bodies,
batch sizes and ``k`` are bounded; writes need ``Authorization: Bearer <token>`` when a token is configured,
and a write is answered only after its mutation-log record is on disk. Handlers are plain ``def`` so
FastAPI runs them in its thread pool: searches run in parallel (hnswlib releases the GIL), writes one at
a time.
"""

# No "from __future__ import annotations": FastAPI must see the request models (local classes) as real types.

import hmac
import logging
from contextlib import asynccontextmanager
from typing import Any, Literal

from .. import __version__, defaults
from ..errors import DataError, HCEError, missing_dependency
from ..lexical.fusion import FUSIONS
from ..options import EngineOptions
from .limits import BodyLimit, Limits
from .page import add_page

log = logging.getLogger(__name__)

__all__ = ["create_app"]


def create_app(engine: Any, token: str | None = None, limits: Limits | None = None,
               save_on_shutdown: bool = True) -> Any:
    """A FastAPI app serving ``engine`` (an ``hce_serve.engine.Engine``)."""
    try:
        from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from pydantic import BaseModel, Field
    except ImportError:
        raise missing_dependency("fastapi", "serve") from None
    lim = limits or Limits()
    EF = EngineOptions.EF
    Scalar = str | int | float | bool  # metadata and filter values

    class SearchBody(BaseModel):
        query: str | None = Field(None, description="One query (answer: hits).")
        queries: list[str] | None = Field(None, description="A batch of queries (answer: results).")
        k: int = Field(defaults.K, description=f"Hits per query, 1..{lim.max_k}.")
        ef: int | None = Field(None, description=f"Search breadth for this request, {EF.lo}..{EF.hi}: HNSW beam or "
                               "IVF cells scanned (default: the index's).")
        filter: dict[str, Scalar | list[Scalar]] | None = Field(
            None, description='Metadata equality, a list meaning any of: {"lang": "en", "year": [2020, 2021]}.')
        subtree: int | None = Field(None, description="Only documents under this node of the corpus tree.")
        fields: list[str] | None = Field(None,
                                         description=f"Stored fields per hit (default: {', '.join(defaults.FIELDS)}).")
        mode: Literal[defaults.MODES] | None = Field(None, description="Search mode (default: the index's).")
        fusion: Literal[FUSIONS] | None = Field(None, description="Hybrid fusion (default: the index's).")
        alpha: float | None = Field(None, ge=0.0, le=1.0,
                                    description="Hybrid: the dense side's weight (default: the index's).")
        depth: int | None = Field(None, ge=1, le=defaults.MAX_FUSION_DEPTH,
                                  description="Hybrid: hits per side before fusion.")
        explain: bool = Field(False, description="Each hit carries each side's rank and score.")

    class DocumentIn(BaseModel):
        id: str = Field(alias="_id")
        title: str = ""
        text: str = ""
        metadata: dict[str, Scalar | list[Scalar]] | None = None

    class DocumentsBody(BaseModel):
        documents: list[DocumentIn]

    class IdsBody(BaseModel):
        ids: list[str]

    @asynccontextmanager
    async def lifespan(app: Any):  # noqa: ANN202 - FastAPI's own protocol
        yield
        if save_on_shutdown and engine.writable:
            engine.save()

    app = FastAPI(title="HCE search", version=__version__, lifespan=lifespan,
                  description="Dense retrieval over an HCE index folder.")
    app.add_middleware(BodyLimit, max_bytes=lim.max_body_bytes)

    @app.exception_handler(DataError)
    async def _bad_request(request: Request, exc: DataError) -> Any:
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=400)

    @app.exception_handler(HCEError)
    async def _server_fault(request: Request, exc: HCEError) -> Any:
        # Not the client's doing (a corrupt file, an onnxruntime failure): 500, the traceback in the log.
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _fault(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Any:
        return _fault(exc)  # Starlette re-raises it after answering, so the server logs the traceback

    def _fault(exc: Exception) -> Any:
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}): {' '.join(str(exc).split())[:300]}"},
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Any:
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    def need_write(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        if not engine.writable:
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

    def run_search(texts: list[str], body: SearchBody) -> list[list[dict[str, Any]]]:
        for t in texts:
            if isinstance(t, str) and len(t) > lim.max_query_chars:
                raise DataError(f"query of {len(t):,} characters; the limit is {lim.max_query_chars:,}")
        hits = engine.search_batch(texts, k=body.k, filter=body.filter, ef=body.ef, subtree=body.subtree,
                                   fields=body.fields, max_k=lim.max_k, mode=body.mode, fusion=body.fusion,
                                   alpha=body.alpha, depth=body.depth, explain=body.explain)
        return [[h.to_dict() for h in row] for row in hits]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "live": len(engine)}

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return engine.stats()

    @app.get("/search")
    def search_get(q: str = Query(..., description="Query text"), k: int = defaults.K, ef: int | None = None,
                   fields: str | None = Query(None, description="Comma-separated stored fields"),
                   mode: Literal[defaults.MODES] | None = None,
                   alpha: float | None = Query(None, ge=0.0, le=1.0),
                   fusion: Literal[FUSIONS] | None = None, explain: bool = False) -> dict[str, Any]:
        body = SearchBody(k=k, ef=ef, fields=fields.split(",") if fields is not None else None, mode=mode,
                          alpha=alpha, fusion=fusion, explain=explain)
        return {"hits": run_search([q], body)[0]}

    @app.post("/search")
    def search_post(body: SearchBody) -> dict[str, Any]:
        if (body.query is None) == (body.queries is None):
            raise DataError("give exactly one of 'query' or 'queries'")
        if body.query is not None:
            return {"hits": run_search([body.query], body)[0]}
        check_batch(len(body.queries), "queries")
        return {"results": [{"hits": h} for h in run_search(body.queries, body)]}

    @app.get("/documents/{doc_id}")
    def get_document(doc_id: str) -> dict[str, Any]:
        doc = engine.get(doc_id)
        if doc is None:
            raise HTTPException(404, f"document {doc_id!r} is not in the index")
        return {"_id": doc.id, "title": doc.title, "text": doc.text, "metadata": doc.metadata or {}}

    @app.post("/documents", dependencies=[Depends(need_write)])
    def add_documents(body: DocumentsBody) -> dict[str, Any]:
        check_batch(len(body.documents), "documents")
        res = engine.add([{"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata}
                          for d in body.documents])
        return {"added": res.added, "replaced": res.replaced, "empty": res.empty, "live": len(engine)}

    @app.delete("/documents/{doc_id}", dependencies=[Depends(need_write)])
    def delete_one(doc_id: str) -> dict[str, Any]:
        res = engine.delete([doc_id])
        if res.missing:
            raise HTTPException(404, f"document {doc_id!r} is not in the index")
        return {"deleted": res.deleted, "missing": [], "live": len(engine)}

    @app.post("/documents/delete", dependencies=[Depends(need_write)])
    def delete_many(body: IdsBody) -> dict[str, Any]:
        check_batch(len(body.ids), "ids")
        res = engine.delete(body.ids)
        return {"deleted": res.deleted, "missing": res.missing, "live": len(engine)}

    add_page(app, engine, lim)  # the search page at / (page.py): read-only, its own CSP
    return app
