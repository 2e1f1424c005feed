"""Many searches at once: what the HTTP server's micro-batching runs (``Engine.prepare_search`` and
``Engine.run_searches``).

A ``SearchRequest`` is one checked search: its query texts and settings. ``run`` starts the lexical side of the
hybrid requests (``Backend.start_search_lexical``: a slow one then runs on a lexical thread while the queries are
encoded), encodes the queries of every request that needs the encoder (dense and hybrid) in one call, then
answers each request with its own k, mode, ef, filter, subtree and fields. Requests whose settings are the same
and that carry no filter or subtree are answered by one backend search (one index call, one document fetch): a
query's neighbours do not depend on the other rows of an index call, so each gets the hits it would get alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .lexical import modes

if TYPE_CHECKING:
    from .backend import Backend
    from .formats.tree import Subtree


@dataclass(frozen=True)
class SearchRequest:
    """One checked search (``Engine.prepare_search``): its query texts and settings, ready to run."""

    texts: tuple[str, ...]
    k: int
    settings: modes.SearchSettings
    ef: int | None
    flt: Any  # the checked filter, or None
    scope: Subtree | None
    fields: tuple[str, ...]

    def with_texts(self, texts: Sequence[str]) -> SearchRequest:
        return replace(self, texts=tuple(texts))


def run(store: Backend, vectors: Callable[[Sequence[str]], np.ndarray], requests: Sequence[SearchRequest],
        threads: int, errors: str = "return") -> list[list[modes.Row] | Exception]:
    """Per request its rows, or (``errors="return"``) the exception it raised: see ``Engine.run_searches``."""
    groups = _groups(requests)
    out: list[list[modes.Row] | Exception | None] = [None] * len(requests)
    lexical: dict[int, Future[Any]] = {}  # a hybrid group's lexical side, begun before the encoder runs
    try:
        for g, group in enumerate(groups):
            r = requests[group[0]]
            if r.settings.mode == "hybrid":
                try:
                    lexical[g] = store.start_search_lexical([t for i in group for t in requests[i].texts],
                                                            max(r.settings.depth, r.k), r.flt, r.scope)
                except Exception as e:  # a refusal (no lexical side): before anything is encoded
                    if errors == "raise":
                        raise
                    for i in group:
                        out[i] = e
        return _encode_and_answer(store, vectors, requests, groups, lexical, out, threads, errors)
    finally:
        wait(list(lexical.values()))  # never leave a search running on a store the caller may close next


def _encode_and_answer(store: Backend, vectors: Callable[[Sequence[str]], np.ndarray],
                       requests: Sequence[SearchRequest], groups: list[list[int]], lexical: dict[int, Future[Any]],
                       out: list[Any], threads: int, errors: str) -> list[list[modes.Row] | Exception]:
    dense = [i for i, r in enumerate(requests) if r.settings.mode != "lexical" and out[i] is None]
    rows_of: list[Any] = [None] * len(requests)  # each dense request's rows of the one encoder output
    failure: Exception | None = None
    if dense:
        try:
            matrix = vectors([t for i in dense for t in requests[i].texts])  # (all queries, dim)
        except Exception as e:  # handed to each request that needed the encoder
            if errors == "raise":
                raise
            failure = e
        else:
            start = 0
            for i in dense:
                rows_of[i] = matrix[start : start + len(requests[i].texts)]
                start += len(requests[i].texts)
    for g, group in enumerate(groups):
        if out[group[0]] is not None:  # refused when its lexical side was asked for
            continue
        if failure is not None and requests[group[0]].settings.mode != "lexical":
            for i in group:
                out[i] = failure
            continue
        got = _run_group(store, [requests[i] for i in group], [rows_of[i] for i in group], threads, errors,
                         lexical.get(g))
        for i, rows in zip(group, got, strict=True):
            out[i] = rows
    return out


def _run_group(store: Backend, reqs: list[SearchRequest], vecs: list[Any], threads: int, errors: str,
               lexical: Future[Any] | None) -> list[list[modes.Row] | Exception]:
    """Requests with the same settings in one backend search (``lexical``: its lexical side, begun); if it
    fails, each alone, so that an error is only its own request's."""
    r = reqs[0]
    if len(reqs) > 1:
        try:
            texts = [t for q in reqs for t in q.texts]
            matrix = np.concatenate(vecs) if r.settings.mode != "lexical" else None
            rows = modes.run(store, lambda _: matrix, texts, r.k, r.settings, r.ef, r.flt, r.scope, r.fields, threads,
                             lexical)
        except Exception:  # noqa: BLE001, S110 - answered alone below, where the error is attributed
            pass
        else:
            out, start = [], 0
            for q in reqs:
                out.append(rows[start : start + len(q.texts)])
                start += len(q.texts)
            return out
    out = []
    for q, v in zip(reqs, vecs, strict=True):
        try:  # a lone request keeps the lexical side begun for it; a group's members begin their own
            out.append(modes.run(store, lambda _, v=v: v, q.texts, q.k, q.settings, q.ef, q.flt, q.scope, q.fields,
                                 threads, lexical if len(reqs) == 1 else None))
        except Exception as e:
            if errors == "raise":
                raise
            out.append(e)
    return out


def _groups(requests: Sequence[SearchRequest]) -> list[list[int]]:
    """Positions of requests that one backend search can answer together: the same k, mode settings, ef and
    fields, and no filter or subtree (a filtered HNSW search that cannot fill its beam falls back to an exact
    scan for its whole call, which would change its neighbours' answers)."""
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(requests):
        key = (r.k, r.settings, r.ef, r.fields) if r.flt is None and r.scope is None else ("alone", i)
        groups.setdefault(key, []).append(i)
    return list(groups.values())
