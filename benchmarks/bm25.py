"""The BM25 baseline every quality table is compared against: bm25s (Lucene BM25, k1=1.2, b=0.75).

English stop words and the Snowball stemmer (PyStemmer) when it is installed, the setting bm25s's
own BEIR table uses; without PyStemmer it runs unstemmed and says so in the returned config, because the
two give different numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from hce_serve.documents import Document

log = logging.getLogger(__name__)

K1, B = 1.2, 0.75


def _stemmer() -> Any:
    try:
        import Stemmer
    except ImportError:
        log.warning("PyStemmer not installed: BM25 runs without stemming (scores differ from bm25s's BEIR table)")
        return None
    return Stemmer.Stemmer("english").stemWords


def bm25_run(
    corpus: Sequence[Document], queries: Mapping[str, str], k: int = 100, k1: float = K1, b: float = B
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Retrieve the top ``k`` documents for every query: ({qid: {doc id: score}}, config used)."""
    try:
        import bm25s
    except ImportError:
        from hce_serve.errors import missing_dependency

        raise missing_dependency("bm25s", "bench") from None
    stem = _stemmer()
    doc_ids = [d.id for d in corpus]
    tokens = bm25s.tokenize([d.full_text for d in corpus], stopwords="en", stemmer=stem, show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(tokens, show_progress=False)
    qids = list(queries)
    qtok = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stem, show_progress=False)
    kk = min(k, len(doc_ids))
    rows, scores = retriever.retrieve(qtok, k=kk, show_progress=False, n_threads=1)  # (nq, k) each
    run: dict[str, dict[str, float]] = {}
    for qid, r, s in zip(qids, rows.tolist(), scores.tolist(), strict=True):
        # bm25s pads with zero-score rows when a query matches fewer than k documents: drop those.
        run[qid] = {doc_ids[i]: float(v) for i, v in zip(r, s, strict=True) if v > 0}
    config = {"library": "bm25s", "method": "lucene", "k1": k1, "b": b, "stopwords": "en",
              "stemmer": "snowball-english" if stem else None}
    return run, config
