"""The generative retriever on a BEIR split: beam search's top 100, pytrec_eval's metrics, per-query scores.

The same selection of queries and judgments as ``hce_train.evaluate.evaluate_encoder`` (so every arm of the
quality study is scored on the same queries), with the beam search in place of exact search. No corpus
encode: the documents live in the decoder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Sequence
from typing import Any

from hce_serve.metrics import NAMES, per_query

from ..evaluate import PER_QUERY, load_beir_keeping_empty
from .train import GenerativeRetriever


def evaluate_gr(model: GenerativeRetriever, data_dir: str | os.PathLike[str], split: str = "test",
                query_ids: Collection[str] | None = None, k: int = 100, beams: Sequence[int] = (),
                with_per_query: bool = False, temperatures: Sequence[float] = ()) -> dict[str, Any]:
    """Metrics at the model's beam width and temperature, under ``beams`` at each of those widths and under
    ``temperatures`` at each of those temperatures (at the model's width)."""
    t0 = time.perf_counter()
    data, _ = load_beir_keeping_empty(data_dir, split)
    if query_ids is not None:
        missing = sorted(set(query_ids) - set(data.qrels))
        if missing:
            raise ValueError(f"{len(missing)} of the asked queries are not judged in split {split!r} "
                             f"(first: {missing[0]!r})")
        keep = set(query_ids)
        data.queries = {q: t for q, t in data.queries.items() if q in keep}
        data.qrels = {q: j for q, j in data.qrels.items() if q in keep}
    qids = list(data.queries)
    x = model.query_states([data.queries[q] for q in qids])  # encoded once for every beam width

    def scored(beam: int, temperature: float | None = None) -> dict[str, dict[str, float]]:
        # One extra hit per query: BEIR drops a hit whose id equals the query id before cutting (ArguAna).
        scores, rows = model.search_states(x, k + 1, beam, temperature=temperature)
        run = {q: {model.doc_ids[int(r)]: float(s) for r, s in zip(rows[i], scores[i], strict=True) if r >= 0}
               for i, q in enumerate(qids)}
        return per_query(data.qrels, run)

    per = scored(model.gcfg.beam)
    out: dict[str, Any] = {name: round(sum(per[name].values()) / len(data.qrels), 5) for name in NAMES.values()}
    if with_per_query:
        out["per_query"] = {m: {q: round(v, 5) for q, v in per[m].items()} for m in PER_QUERY}
    widths = {}
    for beam in beams:
        p = per if beam == model.gcfg.beam else scored(beam)
        widths[str(beam)] = {name: round(sum(p[name].values()) / len(data.qrels), 5) for name in NAMES.values()}
    if widths:
        out["beams"] = widths
    temps = {}
    for t in temperatures:
        p = per if t == model.gcfg.temperature else scored(model.gcfg.beam, t)
        temps[f"{t:g}"] = {name: round(sum(p[name].values()) / len(data.qrels), 5) for name in NAMES.values()}
    if temps:
        out["temperatures"] = temps
    out.update(queries=len(qids), docs=len(model.doc_ids), split=split, beam=model.gcfg.beam,
               temperature=model.gcfg.temperature,
               seconds=round(time.perf_counter() - t0, 2))
    return out
