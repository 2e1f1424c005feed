"""Filtered search: latency and recall@10 against exact filtered search, across filter selectivity.

    python -m benchmarks.filters --quick          # 20k vectors
    python -m benchmarks.filters                  # 100k and 1M

An index folder with stored documents is built over synthetic 384-d vectors (``synthetic.clustered``); each
document's metadata holds a ``bucket`` drawn uniformly from 0-999, independent of its vector (the hard
case: matches are scattered over the whole graph). A filter on ``bucket`` in the first m values keeps a
fraction m/1000 of the collection. Per selectivity, on real store and index objects (the work of
``Engine.search`` after encoding):

- ``match``: the SQLite lookup of the matching ids (``IndexStore.match``), once per query;
- ``search``: ``Index.search`` with those ids, as the engine runs it (an exact scan when that costs less
  than the graph walk, ``Index.scans``; otherwise hnswlib with the filter inside its callback), and
  ``graph``: the filtered graph forced;
- ``post_filter``: the top ``k * 10`` unfiltered, then filtered — what a filter outside the index gives.

Recall is against the exact top-10 among the matching documents.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import cli, figures, paths, provenance, synthetic, timing
from hce_serve.checks import check_filter
from hce_serve.defaults import FILTER_SCAN_COST
from hce_serve.documents import Document
from hce_serve.folder.store import IndexStore
from hce_serve.index.exact import recall_at_k, topk_inner_product
from hce_serve.index.index import Index
from hce_serve.options import IndexParams

log = logging.getLogger(__name__)

DIM, K, BUCKETS = 384, 10, 1000
SELECTIVITY = (0.001, 0.01, 0.05, 0.1, 0.3, 1.0)


def build(folder: Path, x: np.ndarray, buckets: np.ndarray, params: IndexParams) -> float:
    """An index folder over ``x`` whose documents carry ``{"bucket": b}``; returns seconds."""
    t = time.perf_counter()
    ids = [f"d{i}" for i in range(x.shape[0])]
    index = Index(x.shape[1], params, capacity=x.shape[0])
    for s in range(0, x.shape[0], 65536):
        index.add(ids[s : s + 65536], x[s : s + 65536])
    docs = (Document(i, "", "", {"bucket": int(b)}) for i, b in zip(ids, buckets.tolist(), strict=True))
    IndexStore.create(folder, index, None, documents=docs)
    return time.perf_counter() - t


def labels_of(hits: list[list[tuple[str, float]]]) -> np.ndarray:
    return np.array([[int(d[1:]) for d, _ in row] + [-1] * (K - len(row)) for row in hits])  # (nq, K)


def measure(store: IndexStore, x: np.ndarray, buckets: np.ndarray, q: np.ndarray, sel: float,
            args: argparse.Namespace) -> dict[str, Any]:
    m = max(1, round(sel * BUCKETS))
    flt = check_filter({"bucket": list(range(m))})
    allowed = buckets < m  # (n,)
    rows = np.flatnonzero(allowed)
    truth = rows[topk_inner_product(x[rows], q, K)[1]]  # (nq, K) exact filtered top-k
    ids = store.docs.match(flt)  # the stored metadata's filter index, as IndexStore.search uses it
    index = store.index
    res: dict[str, Any] = {"selectivity": sel, "matching": int(allowed.sum()),
                           "exact_scan": index.scans(len(ids), max(K, args.ef))}
    for name, kw in (("search", {}), ("graph", {"exact": False})):
        res[name] = {"recall@10": round(recall_at_k(labels_of(index.search(q, K, ef=args.ef, allow_ids=ids, **kw)),
                                                    truth), 4)}
    post = [[h for h in row if allowed[int(h[0][1:])]][:K] for row in index.search(q, K * 10, ef=args.ef, exact=False)]
    res["post_filter"] = {"recall@10": round(recall_at_k(labels_of(post), truth), 4),
                          "mean_hits": round(float(np.mean([len(r) for r in post])), 2)}
    timings = timing.timed({
        "match": lambda i: store.docs.match(flt),
        "search": lambda i: index.search(q[i % len(q)][None], K, ef=args.ef, allow_ids=ids),
        "graph": lambda i: index.search(q[i % len(q)][None], K, ef=args.ef, allow_ids=ids, exact=False),
        "unfiltered": lambda i: index.search(q[i % len(q)][None], K, ef=args.ef, exact=False),
    }, args.latency_queries, warmup=min(20, args.latency_queries))
    for name, tm in timings.items():
        res.setdefault(name, {}).update({k: v for k, v in tm.stats().items() if k in ("p50_ms", "p99_ms", "mean_ms")})
    log.info("selectivity %.3f: %s", sel, res)
    return res


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    x = synthetic.clustered(n, DIM, args.clusters, args.seed)  # (n, DIM)
    q = synthetic.clustered(args.queries, DIM, args.clusters, args.seed, noise_seed=args.seed + 1)  # (nq, DIM)
    buckets = np.random.default_rng(args.seed + 2).integers(0, BUCKETS, n)  # (n,) independent of x
    params = IndexParams(M=args.M, ef_construction=args.ef_construction, ef_search=args.ef, exact_threshold=0)
    with tempfile.TemporaryDirectory(prefix="hce-filters-", dir=args.tmp) as tmp:
        secs = build(Path(tmp) / "idx", x, buckets, params)
        with IndexStore.open(Path(tmp) / "idx") as store:
            rows = [measure(store, x, buckets, q, s, args) for s in args.selectivity]
    return {"n": n, "build_seconds_incl_documents": round(secs, 1), "selectivity": rows}


def plot(results: list[dict], out: Path) -> None:
    plt = figures.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        sel = [s["selectivity"] for s in r["selectivity"]]
        a.plot(sel, [s["search"]["p50_ms"] + s["match"]["p50_ms"] for s in r["selectivity"]], "-o",
               label=f"{r['n']:,} filtered")
        a.plot(sel, [s["unfiltered"]["p50_ms"] for s in r["selectivity"]], ":", label=f"{r['n']:,} unfiltered")
        b.plot(sel, [s["search"]["recall@10"] for s in r["selectivity"]], "-o", label=f"{r['n']:,} in-index filter")
        b.plot(sel, [s["post_filter"]["recall@10"] for s in r["selectivity"]], "--x", label=f"{r['n']:,} post-filter")
    for ax, ylabel in ((a, "p50 ms (match + search, 1 thread)"), (b, "recall@10 vs exact filtered")):
        ax.set_xscale("log")
        ax.set_xlabel("filter selectivity (fraction of documents matching)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Filtered search across selectivity (384-d, M=16; 2-core CPU)")
    figures.save_figure(fig, out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "filters")
    ap.add_argument("--sizes", default=None, help="comma-separated sizes (overrides the mode)")
    ap.add_argument("--selectivity", default=",".join(map(str, SELECTIVITY)), help="comma-separated fractions")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--latency-queries", type=int, default=None)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="folder for the temporary index folders [system temp]")
    args = cli.parse(ap, argv)
    sizes = [int(s) for s in (args.sizes or ("20000" if args.quick else "100000,1000000")).split(",")]
    args.selectivity = [float(s) for s in args.selectivity.split(",")]
    args.latency_queries = args.latency_queries or (200 if args.quick else 1000)
    t0 = time.perf_counter()
    results = [run_size(n, args) for n in sizes]
    plot(results, paths.plot_path(args.out, "selectivity"))
    payload = {"benchmark": "filters", "mode": "quick" if args.quick else "full", "dim": DIM, "k": K,
               "data": f"synthetic: {args.clusters}-centre mixture, unit vectors; bucket uniform in 0-{BUCKETS - 1}, "
                       "independent of the vector", "params": {"M": args.M, "ef_construction": args.ef_construction,
                                                                "ef": args.ef, "filter_scan_cost": FILTER_SCAN_COST},
               "queries": args.queries, "latency_queries": args.latency_queries,
               "wall_seconds": round(time.perf_counter() - t0, 1), "sizes": results}
    print(provenance.write_result(args.out, payload, __file__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
