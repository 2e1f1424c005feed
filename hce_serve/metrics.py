"""Retrieval metrics through pytrec_eval (trec_eval's own code), never hand-written.

``evaluate`` returns nDCG@10, Recall@10, Recall@100 and MRR@10 averaged over the judged queries; a judged
query with no hits counts as 0, like trec_eval with ``-c``. ``per_query`` gives the same numbers per query,
and ``paired_test`` compares two systems on them (randomization test and bootstrap CI, as in Smucker,
Allan & Carterette, CIKM 2007).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

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
    per = per_query(qrels, run, ignore_identical_ids)
    n = len(qrels)
    return {name: round(sum(per[name].values()) / n, 5) for name in NAMES.values()}


def per_query(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """{metric name: {qid: value}} for every query in ``qrels`` (0 for a query without hits)."""
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
    out = {NAMES[m]: {q: float(main.get(q, {}).get(m, 0.0)) for q in qrels}
           for m in ("ndcg_cut_10", "recall_10", "recall_100")}
    out["mrr@10"] = {q: float(rr.get(q, {}).get("recip_rank", 0.0)) for q in qrels}
    return out


def paired_test(a: Sequence[float], b: Sequence[float], resamples: int = 100_000, seed: int = 0) -> dict[str, float]:
    """Compare per-query scores ``a`` and ``b`` (same queries, same order): is mean(a - b) nonzero?

    ``p``: two-sided paired randomization test (each query's difference gets a random sign; the p-value is
    the share of sign assignments whose mean is at least as far from 0 as the observed one, counting the
    observed one). ``ci_low``/``ci_high``: 95 % percentile-bootstrap interval of the mean difference
    (queries resampled with replacement). Both in the scores' own units.
    """
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or d.size == 0 or len(a) != len(b):
        raise ValueError("paired_test needs two equally long, non-empty score lists")
    rng = np.random.default_rng(seed)
    obs = float(d.mean())
    hits, boots = 0, []
    for lo in range(0, resamples, 10_000):  # chunks keep the (chunk, queries) matrices small
        n = min(10_000, resamples - lo)
        signs = rng.integers(0, 2, size=(n, d.size), dtype=np.int8) * 2 - 1
        hits += int((np.abs((signs * d).mean(1)) >= abs(obs) - 1e-12).sum())
        boots.append(d[rng.integers(0, d.size, size=(n, d.size))].mean(1))
    boot = np.concatenate(boots)
    return {"diff": obs, "p": (hits + 1) / (resamples + 1), "ci_low": float(np.percentile(boot, 2.5)),
            "ci_high": float(np.percentile(boot, 97.5)), "queries": int(d.size), "resamples": int(resamples)}
