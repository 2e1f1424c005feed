"""HTTP API over an ``Engine`` (FastAPI). ``create_app`` builds it; ``hce-serve http`` runs it with uvicorn.

Endpoints: ``GET /healthz``, ``GET /stats``, ``GET /search?q=&k=&ef=&fields=``, ``POST /search`` (one query
or a batch, with ``filter``, ``ef``, ``subtree``, ``fields``), ``GET /documents/{id}``, ``POST /documents``
(add or replace), ``DELETE /documents/{id}``, ``POST /documents/delete``; OpenAPI at ``/docs``; the search
page at ``/`` with ``GET /facets`` and ``GET /search/options`` (``page.py``).

Errors are JSON ``{"detail": "<one line>"}``: 4xx for a bad request (the client can fix it), 5xx for a
fault of the server (a corrupt file, an onnxruntime failure), logged with its traceback. Request bodies,
batch sizes and ``k`` are bounded; writes need ``Authorization: Bearer <token>`` when a token is configured,
and a write is answered only after its mutation-log record is on disk.

Searches are checked on the event loop and run by the micro-batcher (``batcher.py``): concurrent requests
share one encoder call, each keeping its own settings, and a lone request runs at once; answers are rendered
to bytes by orjson on the batch's thread (``wire.py``). Other handlers are plain ``def``, run by FastAPI's
thread pool; writes go one at a time. With ``read_only_reason`` (several worker processes) writes are refused.
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
from . import wire
from .batcher import Batching, SearchBatcher
from .fastlane import NotMine, SearchLane
from .limits import BodyLimit, Limits
from .page import add_page

log = logging.getLogger(__name__)

__all__ = ["create_app"]


def create_app(engine: Any, token: str | None = None, limits: Limits | None = None, save_on_shutdown: bool = True,
               batching: Batching | None = None, read_only_reason: str | None = None) -> Any:
    """A FastAPI app serving ``engine`` (an ``hce_serve.engine.Engine``). ``batching``: how searches are
    micro-batched (default ``Batching()``; ``max_wait_ms=0`` turns it off). ``read_only_reason``: refuse
    writes with this message even on a writable engine."""
    try:
        from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response
        from pydantic import BaseModel, Field, ValidationError
    except ImportError:
        raise missing_dependency("fastapi", "serve") from None
    if wire.orjson is None:
        raise missing_dependency("orjson", "serve")
    lim = limits or Limits()
    bat = batching or Batching()
    batcher = SearchBatcher(engine.run_searches, lambda rows, meta: wire.search_answer(rows, *meta),
                            max_wait=bat.max_wait_ms / 1000, max_queries=bat.max_queries,
                            workers=bat.worker_count(engine.options.threads))
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
        try:
            yield
        finally:
            batcher.close()
        if save_on_shutdown and engine.writable and read_only_reason is None:
            engine.save()

    app = FastAPI(title="HCE search", version=__version__, lifespan=lifespan,
                  description="Dense retrieval over an HCE index folder.")

    async def lane(obj: Any) -> tuple[int, bytes]:
        """``POST /search`` without FastAPI's routing (``fastlane.py``); the same answers as the route."""
        try:
            body = SearchBody.model_validate(obj)
        except ValidationError:
            raise NotMine from None  # the route answers it: its 422, word for word
        try:
            return 200, await search_answer(body)
        except DataError as e:
            return 400, wire.dumps({"detail": _one_line(e)})
        except Exception as e:
            log.error("POST /search failed", exc_info=e)
            return 500, wire.dumps(_fault_detail(e))

    app.add_middleware(SearchLane, handle=lane)  # added first: innermost, so BodyLimit runs before it
    app.add_middleware(BodyLimit, max_bytes=lim.max_body_bytes)

    @app.exception_handler(DataError)
    async def _bad_request(request: Request, exc: DataError) -> Any:
        return JSONResponse({"detail": _one_line(exc)}, status_code=400)

    @app.exception_handler(HCEError)
    async def _server_fault(request: Request, exc: HCEError) -> Any:
        # Not the client's doing (a corrupt file, an onnxruntime failure): 500, the traceback in the log.
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _fault(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Any:
        return _fault(exc)  # Starlette re-raises it after answering, so the server logs the traceback

    def _fault(exc: Exception) -> Any:
        return JSONResponse(_fault_detail(exc), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Any:
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    def need_write(authorization: str | None = Header(None, include_in_schema=False)) -> None:
        if read_only_reason is not None:
            raise HTTPException(403, read_only_reason)
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

    async def search_answer(body: SearchBody, q: str | None = None) -> bytes:
        """A search's JSON answer (``q``: GET's one query). Checked on the loop, so a bad request never reaches
        a batch; then run by the micro-batcher."""
        if q is not None:
            texts, single = [q], True
        elif (body.query is None) == (body.queries is None):
            raise DataError("give exactly one of 'query' or 'queries'")
        elif body.query is not None:
            texts, single = [body.query], True
        else:
            check_batch(len(body.queries), "queries")
            texts, single = body.queries, False
        for t in texts:
            if isinstance(t, str) and len(t) > lim.max_query_chars:
                raise DataError(f"query of {len(t):,} characters; the limit is {lim.max_query_chars:,}")
        req = engine.prepare_search(texts, k=body.k, filter=body.filter, ef=body.ef, subtree=body.subtree,
                                    fields=body.fields, max_k=lim.max_k, mode=body.mode, fusion=body.fusion,
                                    alpha=body.alpha, depth=body.depth, explain=body.explain)
        return await batcher.submit(req, (req.fields, single))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "live": len(engine)}

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return {**engine.stats(), "batching": {"max_wait_ms": bat.max_wait_ms, "max_queries": bat.max_queries,
                                               "workers": batcher.workers, **batcher.stats.to_dict()}}

    hits_doc = {200: {"description": '{"hits": [{"id", "score", stored fields, "explain"}]}; a batch: '
                                     '{"results": [{"hits": [...]}, ...]}', "content": {"application/json": {}}}}

    @app.get("/search", response_class=Response, responses=hits_doc)
    async def search_get(q: str = Query(..., description="Query text"), k: int = defaults.K, ef: int | None = None,
                         fields: str | None = Query(None, description="Comma-separated stored fields"),
                         mode: Literal[defaults.MODES] | None = None,
                         alpha: float | None = Query(None, ge=0.0, le=1.0),
                         fusion: Literal[FUSIONS] | None = None, explain: bool = False) -> Any:
        body = SearchBody(k=k, ef=ef, fields=fields.split(",") if fields is not None else None, mode=mode,
                          alpha=alpha, fusion=fusion, explain=explain)
        return Response(await search_answer(body, q), media_type="application/json")

    @app.post("/search", response_class=Response, responses=hits_doc)
    async def search_post(body: SearchBody) -> Any:
        # Most requests are answered by the fast lane before routing; this route answers the rest (and /docs).
        return Response(await search_answer(body), media_type="application/json")

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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _fault_detail(exc: BaseException) -> dict[str, str]:
    return {"detail": f"internal error ({type(exc).__name__}): {_one_line(exc)[:300]}"}
