"""Training examples: (query text, positive document row, every relevant row of that query).

Supervised examples are the graded-relevant pairs of a qrels split (unknown ids skipped, counted and
warned by ``hce_serve.beir.check_qrels``). Unsupervised examples are pseudo-queries: a random span of
words cut from each document, with that document as the positive; they are redrawn every epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hce_serve.errors import DataError
from hce_serve.formats import beir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    ids: list[str]
    texts: list[str]  # title + text, as the encoder sees them
    # Documents with empty title and text, left out of ``ids``/``texts`` (nothing to train on): their ids and
    # their rows in the corpus file (``hce-serve index build`` indexes them, so file-aligned arrays have them).
    empty_ids: tuple[str, ...] = ()
    empty_rows: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Examples:
    queries: list[str]  # query text per example
    doc_rows: np.ndarray  # (n,) int64: the positive's corpus row per example
    positives: list[frozenset[int]]  # every relevant corpus row of the example's query (never a negative)
    # The positive's text per example when it is not the whole document (a second crop of it); None: the
    # document's own text.
    pos_texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.queries)


def load_corpus(data_dir: str | os.PathLike[str]) -> Corpus:
    """The corpus of a BEIR folder without its empty documents (warned, counted); duplicate ids are DataErrors.

    A document with empty title and text gives nothing to learn (no span to crop, no text to match), so
    ``fit`` and ``distill-query`` leave it out, where ``hce-serve index build`` indexes it with a warning.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: data folder not found")
    ids, texts, empty_ids, empty_rows = [], [], [], []
    for row, doc in enumerate(beir.iter_corpus(d / "corpus.jsonl", empty="keep")):
        if doc.is_empty:
            empty_ids.append(doc.id)
            empty_rows.append(row)
        else:
            ids.append(doc.id)
            texts.append(doc.full_text)
    path = beir.resolve(d / "corpus.jsonl")
    if not ids:
        raise DataError(f"{path}: all {len(empty_ids)} documents have empty title and text; nothing to train on")
    if empty_ids:
        log.warning("%s: left out %d documents with empty title and text from training (nothing to learn from; "
                    "`hce-serve index build` still indexes them)", path, len(empty_ids))
    return Corpus(ids, texts, tuple(empty_ids), tuple(empty_rows))


def _judging_text(qrels: beir.Qrels, corpus: Corpus, where: object) -> beir.Qrels:
    """``qrels`` without the judgments of the corpus's empty documents (left out of training, counted here
    rather than among the unknown ids)."""
    empty = set(corpus.empty_ids)
    if not empty:
        return qrels
    kept = {q: {doc: g for doc, g in judged.items() if doc not in empty} for q, judged in qrels.items()}
    dropped = sum(len(j) for j in qrels.values()) - sum(len(j) for j in kept.values())
    if dropped:
        log.warning("%s: left out %d judgments of documents with empty title and text", where, dropped)
    return {q: judged for q, judged in kept.items() if judged}


def supervised_examples(data_dir: str | os.PathLike[str], split: str, corpus: Corpus,
                        holdout: Collection[str] = ()) -> Examples:
    """One example per relevant (grade > 0) judgment of ``split``, leaving out the ``holdout`` queries."""
    d = Path(data_dir)
    qpath = beir.qrels_path(d, split)
    queries = beir.load_queries(d / "queries.jsonl")
    check = beir.check_qrels(_judging_text(beir.load_qrels(qpath), corpus, qpath), queries, corpus.ids, str(qpath))
    missing = sorted(set(holdout) - set(check.kept))
    if missing:
        raise DataError(f"{qpath}: {len(missing)} held-out queries are not judged in this split "
                        f"(first: {missing[0]!r})")
    row = {doc_id: i for i, doc_id in enumerate(corpus.ids)}
    texts: list[str] = []
    rows: list[int] = []
    pos: list[frozenset[int]] = []
    held = set(holdout)
    for qid, judged in check.kept.items():
        if qid in held:
            continue
        relevant = frozenset(row[doc] for doc, grade in judged.items() if grade > 0)
        for doc in sorted(judged):
            if judged[doc] > 0:
                texts.append(queries[qid])
                rows.append(row[doc])
                pos.append(relevant)
    if not texts:
        raise DataError(f"{qpath}: no relevant judgment refers to a known query and document")
    log.info("%s: %d training pairs from %d queries (%d held out)", qpath, len(texts), len(check.kept) - len(held),
             len(held))
    return Examples(texts, np.asarray(rows, np.int64), pos)


def holdout_queries(data_dir: str | os.PathLike[str], split: str, n: int, seed: int,
                    never: Collection[str] = ("test",)) -> list[str]:
    """A fixed, seeded dev split: ``n`` query ids judged (grade > 0) in ``split``, sorted.

    Queries also judged in any of the ``never`` splits (those that exist) are not eligible, so a dev split
    can never share a query with the test split. The same (qrels files, n, seed) give the same list.
    """
    d = Path(data_dir)
    queries = beir.load_queries(d / "queries.jsonl")
    qpath = beir.qrels_path(d, split)
    # The documents training sees (load_corpus leaves the empty ones out, and supervised_examples their judgments)
    doc_ids = [doc.id for doc in beir.iter_corpus(d / "corpus.jsonl", empty="skip")]
    judged = beir.check_qrels(beir.load_qrels(qpath), queries, doc_ids, str(qpath)).kept
    eligible = sorted(q for q, docs in judged.items() if any(g > 0 for g in docs.values()))
    banned: set[str] = set()
    for other in never:
        if other != split and (d / "qrels" / f"{other}.tsv").is_file():
            banned |= set(beir.load_qrels(beir.qrels_path(d, other)))
    eligible = [q for q in eligible if q not in banned]
    if not 0 < n < len(eligible):
        raise DataError(f"{qpath}: cannot hold out {n} of {len(eligible)} eligible queries (need 0 < n < all)")
    pick = np.random.default_rng([seed, 30]).permutation(len(eligible))[:n]
    return sorted(eligible[i] for i in pick)


def pseudo_query_examples(corpus: Corpus, rng: np.random.Generator, span_min: int, span_max: int,
                          drop: float = 0.0, positive_rng: np.random.Generator | None = None) -> Examples:
    """One pseudo-query per document: ``span_min..span_max`` consecutive words at a random offset.

    A document shorter than the drawn span gives its whole text (every document still trains). ``drop`` > 0
    deletes each word of the span with that probability (Contriever's cropping with word deletion), so the
    query is no longer a verbatim substring of its positive; at least one word is always kept.
    ``positive_rng``: the positive is a second crop of the document, drawn the same way but independently
    (Contriever's pairs: two views of one document), instead of the whole document.
    """
    texts = _crops(corpus, rng, span_min, span_max, drop)
    rows = np.arange(len(corpus), dtype=np.int64)
    pos = _crops(corpus, positive_rng, span_min, span_max, drop) if positive_rng is not None else None
    return Examples(texts, rows, [frozenset((int(r),)) for r in rows], pos)


def _crops(corpus: Corpus, rng: np.random.Generator, span_min: int, span_max: int, drop: float) -> list[str]:
    texts = []
    for text in corpus.texts:
        words = text.split()
        length = int(rng.integers(span_min, span_max + 1))
        start = int(rng.integers(0, len(words) - length + 1)) if len(words) > length else 0
        span = words[start : start + length]
        if drop > 0 and span:
            keep = rng.random(len(span)) >= drop
            keep[int(rng.integers(len(span)))] = True
            span = [w for w, k in zip(span, keep, strict=True) if k]
        texts.append(" ".join(span))
    return texts


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's global batches of example indices: a seeded shuffle, every batch exactly full.

    The last batch is topped up from the start of the shuffle so that every step (and every DDP rank)
    sees the same shapes; duplicates that this creates are masked as false negatives by the loss.
    """
    perm = np.random.default_rng([seed, epoch, 1]).permutation(n_examples)
    steps = -(-n_examples // batch_size)
    padded = np.resize(perm, steps * batch_size)  # repeats the shuffle from its start to fill the last batch
    return [padded[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def topic_batches(groups: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's batches of example indices for tree-topic batching (TAS-B's balanced topic-aware sampling,
    Hofstaetter et al. 2021, with the tree's top-level nodes as the topics).

    ``groups[i]`` is the topic of example i (the top-level node above its positive). Every example appears
    once; every batch holds exactly ``batch_size`` rows drawn from at most two topics. Packing: a batch
    starts with the smallest topic left (whole, or its first ``batch_size``); if that leaves room, the
    topic left that best fits the room (the smallest that fills it) fills it. When no topic left can fill
    the room the batch is topped up with repeats of its own rows (masked as false negatives by the loss,
    like ``epoch_batches``' last batch), so an epoch may take a few more batches than a random one.
    Topic order, order within a topic and the batches' order are seeded by (seed, epoch).
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng([seed, epoch, 4])
    topics = rng.permutation(np.unique(groups))
    rank = {int(t): i for i, t in enumerate(topics)}  # ties between equal sizes go by this seeded order
    left = {int(t): list(rng.permutation(np.flatnonzero(groups == t))) for t in topics}
    batches: list[np.ndarray] = []
    while left:
        first = min(left, key=lambda t: (len(left[t]), rank[t]))
        rows = _take(left, first, batch_size)
        room = batch_size - len(rows)
        if room:
            fits = [t for t in left if len(left[t]) >= room]
            if fits:
                rows += _take(left, min(fits, key=lambda t: (len(left[t]), rank[t])), room)
            else:  # nothing left can fill the batch from one topic: repeat its own rows
                rows += [rows[int(i)] for i in rng.integers(0, len(rows), size=room)]
        batches.append(np.asarray(rows, np.int64))
    return [batches[i] for i in rng.permutation(len(batches))]


def _take(left: dict[int, list[int]], topic: int, n: int) -> list[int]:
    rows, left[topic] = left[topic][:n], left[topic][n:]
    if not left[topic]:
        del left[topic]
    return [int(r) for r in rows]

