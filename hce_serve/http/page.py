"""The search page at ``/``: static files shipped in the package (``static/``), no build step, no CDN.

``add_page`` adds to an app:

- ``GET /`` and ``GET /static/{name}``: the page (index.html, app.js, style.css, icon.svg), each with a
  Content-Security-Policy that allows scripts, styles and requests only from this origin and no inline script,
  so text that reaches the page from the index cannot run even if a rendering bug let it into the DOM;
- ``GET /facets``: the metadata keys and values a client can filter on (``Engine.field_values``), bounded;
- ``GET /search/options``: the modes this index can serve, its default search settings and ``max_k``.

The page reads only: it sends ``GET`` requests and ``POST /search``, and holds no token (the server never puts
one in a page). The API routes stay free of the policy header: ``/docs`` (Swagger UI) loads its own scripts.
"""

# No "from __future__ import annotations": FastAPI must see the handlers' Request annotation as the real type.

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .. import defaults, facets
from ..errors import HCEError
from ..lexical.fusion import FUSIONS
from .limits import Limits

STATIC = "static"
TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "style.css": "text/css; charset=utf-8", "icon.svg": "image/svg+xml"}
# Everything from this origin only; no inline script or style, no plugins, no framing, no form posts elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The page's files from the installed package; a missing one is a broken install."""
    root = resources.files(__package__) / STATIC
    out = {}
    for name, media in TYPES.items():
        try:
            body = (root / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise HCEError(f"the search page's {STATIC}/{name} is missing from the installed hce_serve.http package; "
                           "reinstall hce") from None
        out[name] = Asset(body, media, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return out


def add_page(app: Any, engine: Any, limits: Limits) -> None:
    """Add the page's routes and its two read-only endpoints to ``app`` (a FastAPI app serving ``engine``)."""
    from fastapi import Query, Request
    from fastapi.responses import RedirectResponse, Response

    assets = load_assets()

    def serve(name: str, request: Request) -> Response:
        a = assets[name]
        if request.headers.get("if-none-match") == a.etag:
            return Response(status_code=304, headers={**HEADERS, "ETag": a.etag})
        return Response(a.body, media_type=a.media_type, headers={**HEADERS, "ETag": a.etag})

    @app.get("/", include_in_schema=False)
    def page(request: Request) -> Response:
        return serve("index.html", request)

    @app.get("/index.html", include_in_schema=False)
    def page_alias() -> Response:
        return RedirectResponse("/", status_code=308)

    @app.get(f"/{STATIC}/{{name}}", include_in_schema=False)
    def static(name: str, request: Request) -> Response:
        if name not in assets or name == "index.html":
            return Response(b"not found", status_code=404, media_type="text/plain", headers=HEADERS)
        return serve(name, request)

    @app.get("/facets")
    def get_facets(keys: int = Query(facets.KEYS, ge=1, le=facets.MAX_KEYS, description="Most metadata keys."),
                   values: int = Query(facets.VALUES, ge=1, le=facets.MAX_VALUES, description="Most values per key."),
                   ) -> dict[str, Any]:
        """Metadata keys and values to filter on, with document counts (capped at ``count_cap``): from the
        folder's filter index, or from a sample of a Milvus collection's documents (``sampled``)."""
        return {**engine.field_values(keys, values), "count_cap": facets.COUNT_CAP}

    @app.get("/search/options")
    def search_options() -> dict[str, Any]:
        """What a search request may choose here: the modes this index serves, its defaults, ``max_k``."""
        has_lexical = getattr(engine.store, "lexical", None) is not None  # a Milvus collection has no lexical side
        modes = [m for m in defaults.MODES if m == "dense" or has_lexical]
        return {"modes": modes, "defaults": engine.search_defaults.to_dict(), "fusions": list(FUSIONS),
                "max_k": limits.max_k, "fields": list(defaults.FIELDS), "stores_documents": engine.stores_documents}

