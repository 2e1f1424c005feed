"""The lexical (BM25) side of hybrid search on Milvus (issue 29, item 3) against the index folder's own.

Three arms per collection, each searched for every test query to ``--depth``:
- ``hce``: the folder's lexical index (``lexical.bm25.LexicalIndex``: Snowball English, Lucene's 33 stop words,
  k1 1.5, b 0.75);
- ``milvus``: what ``hce-serve index export-milvus`` writes and ``MilvusStore.search_lexical`` reads: Milvus
  full-text search (a BM25 function, SPARSE_INVERTED_INDEX, bm25_k1/bm25_b) over the folder's analysed terms;
- ``milvus-native``: Milvus's own analysis of the raw title and text (the ``standard`` tokenizer with the same
  stop words as a ``stop`` filter; milvus-lite has no stemmer), to show what the hce-side analysis buys.

The collections are written with the same ``layout.entity`` rows as an export; the dense vector of each row is a
placeholder (the lexical side never reads it), so no encoder runs. Reported: nDCG@10 and R@100 (pytrec_eval),
the queries whose top 10 are the same ids in the same order as hce's, the largest score difference on those,
and the time to write and to search. milvus-lite keeps BM25 statistics per segment; one flush after the export
makes one segment here (up to its 100,000 rows), as it does for ``export-milvus``.

    python -m benchmarks.milvus_lexical                       # SciFact (about a minute)
    python -m benchmarks.milvus_lexical --datasets scifact,cisi,npl,medline,arguana
"""

from __future__ import annotations

import importlib.metadata as _md
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.cli import parse, study_parser
from benchmarks.harness.paths import SHARED_DATA
from benchmarks.harness.provenance import write_result
from hce_serve.formats.beir import load_beir
from hce_serve.formats.tree import NO_LEAF
from hce_serve.lexical.analyzer import ENGLISH_STOPWORDS, Analyzer
from hce_serve.lexical.bm25 import BM25Params, LexicalIndex
from hce_serve.metrics import per_query
from hce_serve.milvus.client import MilvusCollection, connect, pymilvus_module, release
from hce_serve.milvus.layout import MAX_VARCHAR, CollectionManifest, MilvusTarget, VectorIndex, check_document, entity
from hce_serve.milvus.lexical import LexicalSpec
from hce_serve.milvus.store import MilvusStore

log = logging.getLogger(__name__)

PLACEHOLDER = np.array([1.0, 0.0], np.float32)  # the dense field every row needs; never searched here
BATCH = 64  # queries per search RPC


def ranked(lists: dict[str, list[tuple[str, float]]]) -> dict[str, dict[str, float]]:
    """Rank-derived scores, so pytrec_eval orders each list as the arm returned it (ties cannot reorder)."""
    return {q: {d: float(len(hits) - r) for r, (d, _) in enumerate(hits)} for q, hits in lists.items()}


def quality(qrels: dict, lists: dict) -> dict[str, float]:
    per = per_query({q: qrels[q] for q in lists if q in qrels}, ranked(lists))
    return {m: round(100 * statistics.fmean(per[m].values()), 2) for m in ("ndcg@10", "recall@100")}


def agreement(ref: dict, other: dict) -> dict[str, Any]:
    """Queries whose top 10 are ref's ids in ref's order, and the largest top-10 score difference among them."""
    same = [q for q in ref if [d for d, _ in ref[q][:10]] == [d for d, _ in other[q][:10]]]
    diff = max((abs(a - b) for q in same for (_, a), (_, b) in zip(ref[q][:10], other[q][:10], strict=True)),
               default=0.0)
    return {"same_top10": len(same), "queries": len(ref), "max_score_diff_top10": round(float(diff), 6)}


def hce_arm(docs: list, queries: dict[str, str], depth: int) -> tuple[dict, dict[str, float]]:
    t0 = time.perf_counter()
    index = LexicalIndex.build((d.id, d.full_text) for d in docs)
    t1 = time.perf_counter()
    lists = {q: index.search(text, depth) for q, text in queries.items()}
    t2 = time.perf_counter()
    return lists, {"write_s": round(t1 - t0, 2), "search_s": round(t2 - t1, 2)}


def milvus_arm(docs: list, queries: dict[str, str], depth: int, db: Path) -> tuple[dict, dict[str, float]]:
    """Through the product's code: layout rows with the lexical field, ``MilvusStore.search_lexical``."""
    spec = LexicalSpec(Analyzer(), BM25Params())
    manifest = CollectionManifest(len(PLACEHOLDER), "benchmark", True, VectorIndex.make("FLAT"), lexical=spec)
    target = MilvusTarget(str(db), "lexical")
    client = connect(target)
    store = None
    try:
        t0 = time.perf_counter()
        collection = MilvusCollection.create(client, target.collection, manifest)
        rows = []
        for d in docs:
            check_document(d, True, spec)
            rows.append(entity(d, PLACEHOLDER, NO_LEAF, [], True, spec))
        collection.insert(rows)
        collection.flush()
        t1 = time.perf_counter()
        store = MilvusStore(target, client, collection, db.parent, writable=False)
        qids = list(queries)
        lists: dict[str, list[tuple[str, float]]] = {}
        for lo in range(0, len(qids), BATCH):
            part = qids[lo : lo + BATCH]
            for q, row in zip(part, store.search_lexical([queries[q] for q in part], depth), strict=True):
                lists[q] = [(i, s) for i, s, _ in row]
        t2 = time.perf_counter()
    finally:
        if store is not None:
            store.close()
        else:
            client.close()
            release(target)
    return lists, {"write_s": round(t1 - t0, 2), "search_s": round(t2 - t1, 2)}


def native_arm(docs: list, queries: dict[str, str], depth: int, db: Path) -> tuple[dict, dict[str, float]]:
    """Milvus's own analyzer over the raw text: what a collection gets without hce's analysis."""
    pymilvus = pymilvus_module()
    analyzer = {"tokenizer": "standard", "filter": [{"type": "stop", "stop_words": list(ENGLISH_STOPWORDS)}]}
    target = MilvusTarget(str(db), "native")
    client = connect(target)
    try:
        t0 = time.perf_counter()
        s = client.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", pymilvus.DataType.VARCHAR, is_primary=True, max_length=MAX_VARCHAR)
        s.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=len(PLACEHOLDER))
        s.add_field("body", pymilvus.DataType.VARCHAR, max_length=MAX_VARCHAR, enable_analyzer=True,
                    analyzer_params=analyzer)
        s.add_field("sparse", pymilvus.DataType.SPARSE_FLOAT_VECTOR)
        s.add_function(pymilvus.Function(name="bm25", function_type=pymilvus.FunctionType.BM25,
                                         input_field_names=["body"], output_field_names=["sparse"]))
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        bm25 = {"bm25_k1": 1.5, "bm25_b": 0.75}
        params.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                         params={**bm25, "params": bm25})
        client.create_collection(target.collection, schema=s, index_params=params, consistency_level="Strong")
        rows = [{"id": d.id, "vector": PLACEHOLDER, "body": d.full_text} for d in docs]
        for lo in range(0, len(rows), 1024):
            client.insert(target.collection, rows[lo : lo + 1024])
        client.flush(target.collection)
        t1 = time.perf_counter()
        qids = list(queries)
        lists: dict[str, list[tuple[str, float]]] = {}
        for lo in range(0, len(qids), BATCH):
            part = qids[lo : lo + BATCH]
            res = client.search(target.collection, data=[queries[q] for q in part], anns_field="sparse", limit=depth,
                                search_params={"metric_type": "BM25"}, output_fields=["id"])
            for q, row in zip(part, res, strict=True):
                lists[q] = [(h["id"], abs(float(h["distance"])) / (1 + bm25["bm25_k1"])) for h in row]
        t2 = time.perf_counter()
    finally:
        client.close()
        release(target)
    return lists, {"write_s": round(t1 - t0, 2), "search_s": round(t2 - t1, 2)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = study_parser(__doc__, "milvus-lexical", quick=False)
    ap.add_argument("--datasets", default="scifact", help="comma-separated folders of ../shared/data [scifact]")
    ap.add_argument("--depth", type=int, default=100, help="hits per query and arm [100]")
    args = parse(ap, argv)
    out: dict[str, Any] = {"depth": args.depth, "milvus": {n: _md.version(n) for n in ("pymilvus", "milvus-lite")},
                           "collections": {}}
    for name in args.datasets.split(","):
        data = load_beir(SHARED_DATA / name, "test")
        queries = {q: data.queries[q] for q in sorted(data.queries)}
        log.info("%s: %d documents, %d queries", name, len(data.corpus), len(queries))
        arms: dict[str, Any] = {}
        lists: dict[str, dict] = {}
        with tempfile.TemporaryDirectory(prefix="hce-milvus-lexical-") as tmp:
            runs = (("hce", hce_arm, ()), ("milvus", milvus_arm, (Path(tmp) / "a.db",)),
                    ("milvus-native", native_arm, (Path(tmp) / "b.db",)))
            for arm, fn, extra in runs:
                lists[arm], timing = fn(data.corpus, queries, args.depth, *extra)
                arms[arm] = {**quality(data.qrels, lists[arm]), **timing}
                if arm != "hce":
                    arms[arm]["vs_hce"] = agreement(lists["hce"], lists[arm])
                log.info("%s %s: %s", name, arm, arms[arm])
        out["collections"][name] = {"documents": len(data.corpus), "queries": len(queries), "arms": arms}
        write_result(args.out, out, __file__)  # after each collection: a killed run keeps what it measured
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
