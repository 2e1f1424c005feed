"""``hce-train eval``: the torch model, exact inner-product search, metrics from pytrec_eval.

Exact search (no ANN) so training quality is measured apart from index quality.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection
from typing import Any

import numpy as np

from hce_serve.defaults import DOC_MAX_LENGTH, QUERY_MAX_LENGTH
from hce_serve.formats import beir
from hce_serve.formats.card import CARD_NAME, ModelCard
from hce_serve.metrics import NAMES, per_query

from .model import HCEEncoder

log = logging.getLogger(__name__)

PER_QUERY = ("ndcg@10", "recall@100")  # per-query scores kept for paired tests (top-10 quality, deep recall)


def exact_topk(q: np.ndarray, d: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: (scores (nq, k) float32, doc rows (nq, k) int64), best first.

    Queries go in chunks so the (chunk, docs) score block stays small; both sides stay float32.
    """
    q = np.ascontiguousarray(q, np.float32)
    d = np.ascontiguousarray(d, np.float32)
    k = min(k, d.shape[0])
    scores = np.zeros((q.shape[0], k), np.float32)
    rows = np.zeros((q.shape[0], k), np.int64)
    for lo in range(0, q.shape[0], chunk):
        s = q[lo : lo + chunk] @ d.T  # (c, docs)
        if k < d.shape[0]:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]  # (c, k)
        else:
            part = np.tile(np.arange(d.shape[0]), (s.shape[0], 1))  # (c, docs)
        ps = np.take_along_axis(s, part, 1)
        order = np.argsort(-ps, axis=1, kind="stable")
        rows[lo : lo + chunk] = np.take_along_axis(part, order, 1)
        scores[lo : lo + chunk] = np.take_along_axis(ps, order, 1)
    return scores, rows


def load_beir_keeping_empty(data_dir: str | os.PathLike[str], split: str) -> tuple[beir.BeirData, list[int]]:
    """``beir.load_beir`` that keeps documents with empty title and text, as ``hce-serve index build`` indexes
    them and BEIR's evaluation searches them (a warning with their count); returns their rows too."""
    from pathlib import Path

    from hce_serve.errors import DataError

    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: data folder not found")
    qpath = beir.qrels_path(d, split)
    corpus = list(beir.iter_corpus(d / "corpus.jsonl", empty="keep"))
    queries = beir.load_queries(d / "queries.jsonl")
    check = beir.check_qrels(beir.load_qrels(qpath), queries, (doc.id for doc in corpus), str(qpath))
    if not check.kept:
        raise DataError(f"{qpath}: no judgment refers to a known query and document")
    empty = [row for row, doc in enumerate(corpus) if doc.is_empty]
    if empty:
        log.warning("%s: %d documents have empty title and text; searched as they are, as `hce-serve index build` "
                    "indexes them and BEIR's evaluation does", beir.resolve(d / "corpus.jsonl"), len(empty))
    return beir.BeirData(corpus, {q: queries[q] for q in check.kept}, check.kept), empty


def _with_empty_rows(encoder: HCEEncoder, doc_emb: np.ndarray, corpus: list[beir.Document], empty: list[int],
                     max_length: int, batch_size: int) -> np.ndarray:
    """File-aligned embeddings from those of the non-empty documents (fit's): the empty ones encoded here."""
    full = np.zeros((len(corpus), doc_emb.shape[1]), np.float32)
    mask = np.zeros(len(corpus), bool)
    mask[empty] = True
    full[~mask] = doc_emb
    full[mask] = encoder.encode([corpus[r].full_text for r in empty], max_length, batch_size, False)
    return full


def evaluate_encoder(
    encoder: HCEEncoder,
    data_dir: str | os.PathLike[str],
    split: str = "test",
    query_max_length: int = QUERY_MAX_LENGTH,
    doc_max_length: int = DOC_MAX_LENGTH,
    batch_size: int = 128,
    k: int = 100,
    progress: bool = True,
    doc_emb: np.ndarray | None = None,
    with_per_query: bool = False,
    query_ids: Collection[str] | None = None,
) -> dict[str, Any]:
    """Encode the corpus and the split's queries, search exactly, return metrics plus counts and timing.

    ``doc_emb`` (docs, D), row-aligned with the corpus file (or with its non-empty documents, as ``fit``'s
    ``keep`` gives them: the empty ones are then encoded here), skips encoding the corpus. ``with_per_query``
    adds ``per_query``: {"ndcg@10": {qid: value}, "recall@100": {qid: value}} (what paired significance
    tests need). ``query_ids`` evaluates only those queries of the split (a dev split held out of training).
    """
    t0 = time.perf_counter()
    data, empty = load_beir_keeping_empty(data_dir, split)
    if query_ids is not None:
        missing = sorted(set(query_ids) - set(data.qrels))
        if missing:
            raise ValueError(f"{len(missing)} of the asked queries are not judged in split {split!r} "
                             f"(first: {missing[0]!r})")
        keep = set(query_ids)
        data.queries = {q: t for q, t in data.queries.items() if q in keep}
        data.qrels = {q: j for q, j in data.qrels.items() if q in keep}
    qids = list(data.queries)
    if doc_emb is not None and empty and doc_emb.shape[0] == len(data.corpus) - len(empty):
        doc_emb = _with_empty_rows(encoder, doc_emb, data.corpus, empty, doc_max_length, batch_size)
    if doc_emb is not None and doc_emb.shape[0] != len(data.corpus):
        raise ValueError(f"doc_emb has {doc_emb.shape[0]} rows for {len(data.corpus)} documents")
    d_emb = doc_emb if doc_emb is not None else encoder.encode(
        [doc.full_text for doc in data.corpus], doc_max_length, batch_size, progress, "encode corpus")
    q_emb = encoder.encode([data.queries[q] for q in qids], query_max_length, batch_size, progress, "encode queries")
    # One extra hit per query: BEIR drops a hit whose id equals the query id (ArguAna) before cutting.
    scores, rows = exact_topk(q_emb, d_emb, k + 1)
    run = {qid: {data.corpus[int(r)].id: float(s) for r, s in zip(rows[i], scores[i], strict=True)}
           for i, qid in enumerate(qids)}
    per = per_query(data.qrels, run)
    metrics: dict[str, Any] = {name: round(sum(per[name].values()) / len(data.qrels), 5) for name in NAMES.values()}
    if with_per_query:
        metrics["per_query"] = {m: {q: round(v, 5) for q, v in per[m].items()} for m in PER_QUERY}
    metrics.update(queries=len(qids), docs=len(data.corpus), empty=len(empty), split=split,
                   seconds=round(time.perf_counter() - t0, 2))
    return metrics


def evaluate_model_dir(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    split: str = "test",
    device: str = "cpu",
    batch_size: int = 128,
    query_max_length: int | None = None,
    doc_max_length: int | None = None,
    progress: bool = True,
    doc_emb: np.ndarray | None = None,
) -> dict[str, Any]:
    """``evaluate_encoder`` for a MODEL_DIR, with max lengths from its card unless overridden."""
    from pathlib import Path

    encoder = HCEEncoder.load(model_dir, device=device)
    qlen, dlen = QUERY_MAX_LENGTH, DOC_MAX_LENGTH
    if (Path(model_dir) / CARD_NAME).is_file():
        card = ModelCard.load(model_dir)
        qlen, dlen = card.query_max_length, card.max_length
    return evaluate_encoder(
        encoder, data_dir, split, query_max_length or qlen, doc_max_length or dlen, batch_size, progress=progress,
        doc_emb=doc_emb,
    )
