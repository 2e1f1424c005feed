"""Search modes: ``dense`` (the encoder and the vector index), ``lexical`` (BM25) and ``hybrid`` (both, fused).

``SearchSettings`` is what a request may set (mode, fusion method, dense weight alpha, depth per side, explain);
``resolve`` fills what it leaves out from the index's stored defaults (``manifest.extra["search"]``, written
by ``index build``) and then from ``defaults``, and checks every value once, for Python, CLI and HTTP alike.
``run`` executes one batch of queries in a mode against a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..errors import DataError
from . import threads
from .fusion import FUSIONS, fuse

if TYPE_CHECKING:
    from ..backend import Backend

SEARCH_KEY = "search"  # manifest.extra key of the index's default mode, fusion, alpha and depth


@dataclass(frozen=True)
class SearchSettings:
    mode: str = defaults.MODE_DENSE_ONLY
    fusion: str = defaults.FUSION
    alpha: float = defaults.ALPHA
    depth: int = defaults.FUSION_DEPTH
    explain: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "fusion": self.fusion, "alpha": self.alpha, "depth": self.depth}


def check_mode(mode: object) -> str:
    if mode not in defaults.MODES:
        raise DataError(f"mode must be one of {', '.join(defaults.MODES)}, found {mode!r}")
    return str(mode)


def check_fusion(fusion: object) -> str:
    if fusion not in FUSIONS:
        raise DataError(f"fusion must be one of {', '.join(FUSIONS)}, found {fusion!r}")
    return str(fusion)


def check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha (the dense side's weight) must be a number between 0 and 1, found {alpha!r}")
    return float(alpha)


def check_depth(depth: object) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= defaults.MAX_FUSION_DEPTH:
        raise DataError(f"depth must be an integer between 1 and {defaults.MAX_FUSION_DEPTH:,}, found {depth!r}")
    return depth


def stored_defaults(extra: Mapping[str, Any], has_lexical: bool) -> SearchSettings:
    """The index's own defaults: what ``index build`` stored, else dense for a folder without a lexical part."""
    base = SearchSettings(mode=defaults.MODE_WITH_LEXICAL if has_lexical else defaults.MODE_DENSE_ONLY)
    s = extra.get(SEARCH_KEY)
    if not isinstance(s, Mapping):
        return base
    try:
        return SearchSettings(mode=check_mode(s.get("mode", base.mode)),
                              fusion=check_fusion(s.get("fusion", base.fusion)),
                              alpha=check_alpha(s.get("alpha", base.alpha)),
                              depth=check_depth(s.get("depth", base.depth)))
    except DataError:  # a hand-edited manifest: the index still opens, with the built-in defaults
        return base


def resolve(base: SearchSettings, mode: object = None, fusion: object = None, alpha: object = None,
            depth: object = None, explain: object = False) -> SearchSettings:
    """``base`` with a request's choices (None: keep the base's), each checked."""
    return replace(base, mode=base.mode if mode is None else check_mode(mode),
                   fusion=base.fusion if fusion is None else check_fusion(fusion),
                   alpha=base.alpha if alpha is None else check_alpha(alpha),
                   depth=base.depth if depth is None else check_depth(depth), explain=bool(explain))


Row = list[tuple[str, float, Any, dict[str, Any] | None]]  # (id, score, stored document or None, explain)


def run(store: Backend, vectors: Callable[[Sequence[str]], Any], texts: Sequence[str], k: int, s: SearchSettings,
        ef: int | None, flt: Any, scope: Any, fields: Sequence[str], num_threads: int,
        lexical: Future[Any] | None = None) -> list[Row]:
    """One batch of queries in ``s.mode``: dense and lexical rows come straight from the backend; hybrid
    retrieves ``max(depth, k)`` from each side (no stored fields; ``lexical``: that side already begun, by
    ``start_search_lexical``), fuses, then fetches the fields of the k kept."""
    if s.mode == "dense":
        rows = store.search(vectors(texts), k, ef=ef, filter=flt, subtree=scope, fields=fields, num_threads=num_threads)
        return [[(d, sc, doc, _one_side("dense", r, sc) if s.explain else None) for r, (d, sc, doc) in enumerate(row)]
                for row in rows]
    if s.mode == "lexical":
        rows = store.search_lexical(texts, k, filter=flt, subtree=scope, fields=fields)
        return [[(d, sc, doc, _one_side("lexical", r, sc) if s.explain else None) for r, (d, sc, doc) in enumerate(row)]
                for row in rows]
    depth = max(s.depth, k)
    # A slow lexical side runs on another thread while the queries are encoded (searches.run begins it first) and
    # the vectors searched: the BM25 kernel and onnxruntime release the GIL, so with a second core hybrid takes
    # the slower side's time. A backend without a lexical side refuses there, before the queries are encoded.
    pending = lexical or store.start_search_lexical(texts, depth, filter=flt, subtree=scope)
    try:
        dense = store.search(vectors(texts), depth, ef=ef, filter=flt, subtree=scope, fields=(),
                             num_threads=num_threads)
    except BaseException:
        wait([pending])  # never leave a search running on a store the caller may close next
        raise
    lex_rows = pending.result()
    fused = [fuse([(d, sc) for d, sc, _ in dr], [(d, sc) for d, sc, _ in lr], s.fusion, s.alpha, k)
             for dr, lr in zip(dense, lex_rows, strict=True)]
    docs = store.get({f.id for row in fused for f in row}) if fields and store.stores_documents else None
    out: list[Row] = []
    for row in fused:
        if docs is None:
            out.append([(f.id, f.score, None, f.explain() if s.explain else None) for f in row])
        else:  # a hit whose document is gone was deleted after the search answered: it is not returned
            out.append([(f.id, f.score, docs[f.id], f.explain() if s.explain else None) for f in row if f.id in docs])
    return out


def begin(fn: Callable[..., Any], *args: Any, background: bool, **kwargs: Any) -> Future[Any]:
    """``fn(*args, **kwargs)`` as a future: run on the lexical threads when ``background``, else now (its result
    or exception already set). A backend's ``start_search_lexical`` picks."""
    if background:
        return threads.pool("side", defaults.LEXICAL_THREADS).submit(fn, *args, **kwargs)
    done: Future[Any] = Future()
    try:
        done.set_result(fn(*args, **kwargs))
    except DataError:  # a refusal (no lexical side, a bad filter) is the caller's to see at once
        raise
    except Exception as e:  # noqa: BLE001 - handed over like a worker thread's
        done.set_exception(e)
    return done


def _one_side(side: str, rank: int, score: float) -> dict[str, Any]:
    other = "lexical" if side == "dense" else "dense"
    return {side: {"rank": rank + 1, "score": score}, other: None, "fused": None}


__all__ = ["SEARCH_KEY", "SearchSettings", "begin", "check_alpha", "check_depth", "check_fusion", "check_mode",
           "resolve", "run", "stored_defaults"]
