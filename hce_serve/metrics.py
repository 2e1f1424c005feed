"""Retrieval metrics through pytrec_eval (trec_eval's own code), never hand-written.

``evaluate`` returns nDCG@10, Recall@10, Recall@100 and MRR@10 averaged over the judged queries; a judged
query with no hits counts as 0, like trec_eval with ``-c``.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import missing_dependency

MEASURES = ("ndcg_cut_10", "recall_10", "recall_100", "recip_rank")
NAMES = {"ndcg_cut_10": "ndcg@10", "recall_10": "recall@10", "recall_100": "recall@100", "recip_rank": "mrr@10"}


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    ignore_identical_ids: bool = True,
) -> dict[str, float]:
    """Mean metrics over the queries in ``qrels``.

    ``ignore_identical_ids`` drops a retrieved document whose id equals the query id (BEIR's default;
    ArguAna's queries are themselves corpus documents). MRR is cut at 10 by truncating the run.
    """
    try:
        import pytrec_eval
    except ImportError:
        raise missing_dependency("pytrec_eval (pytrec-eval-terrier)", "serve") from None
    full: dict[str, dict[str, float]] = {}
    cut10: dict[str, dict[str, float]] = {}
    for qid in qrels:
        hits = {d: float(s) for d, s in run.get(qid, {}).items() if not (ignore_identical_ids and d == qid)}
        full[qid] = hits
        top = sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        cut10[qid] = dict(top)
    qrels_i = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    main = pytrec_eval.RelevanceEvaluator(qrels_i, {"ndcg_cut.10", "recall.10,100"}).evaluate(full)
    rr = pytrec_eval.RelevanceEvaluator(qrels_i, {"recip_rank"}).evaluate(cut10)
    n = len(qrels)
    out = {}
    for m in ("ndcg_cut_10", "recall_10", "recall_100"):
        out[NAMES[m]] = sum(main.get(q, {}).get(m, 0.0) for q in qrels) / n
    out["mrr@10"] = sum(rr.get(q, {}).get("recip_rank", 0.0) for q in qrels) / n
    return {k: round(v, 5) for k, v in out.items()}
