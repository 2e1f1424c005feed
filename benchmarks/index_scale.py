"""Index scale: build time, peak memory, recall@10 vs exact against latency across ef, and deletions,
for hce_serve's ``Index`` and raw hnswlib on the same vectors in the same run.

    python -m benchmarks.index_scale --quick          # 10k, 100k
    python -m benchmarks.index_scale                  # 10k, 100k, 1M
    nice python -m benchmarks.index_scale --one-box 5000000 --options-size 500000 --tmp /data/tmp   # 5M (hours)

``--one-box N`` is the issue-13 study instead (``one_box.py``): the corpus tree and the index over N vectors
on one box, saved and loaded, recall@10 against exact search, p50/p99 across ef, peak RSS per phase, and the
memory options (hnswlib's fp32 storage, fp16 vectors, Milvus) at ``--options-size`` documents; results go to
``index-scale-one-box[-quick].json``. The 5M run wants (estimated from the 1M figures, not yet measured) about
12 GiB of RAM, ~9 GiB free under ``--tmp`` for the saved index, 1-2 hours on 2 cores, and a quiet machine.

Vectors are synthetic, 384-d, unit length, drawn around ``--clusters`` random centres (a mixture is
harder for HNSW than uniform noise, and closer to real embeddings); queries come from the same mixture and
are not in the index (``synthetic.clustered``). Peak memory is the process's peak RSS growth during the
build (VmHWM, reset through /proc/self/clear_refs before each build).
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

from benchmarks import one_box
from benchmarks.harness import cli, figures, paths, provenance, resources, synthetic
from benchmarks.harness.synthetic import K
from benchmarks.harness.timing import latency
from hce_serve.folder.datafiles import write_index
from hce_serve.folder.recovery import read_index
from hce_serve.index.exact import recall_at_k, topk_inner_product
from hce_serve.index.index import Index
from hce_serve.options import IndexParams

log = logging.getLogger(__name__)

DIM = 384
EFS = (10, 20, 40, 80, 100, 200, 400)


def build_raw(x: np.ndarray, params: IndexParams) -> tuple[Any, float, float]:
    import hnswlib

    rss = resources.reset_peak()
    t = time.perf_counter()
    h = hnswlib.Index(space="ip", dim=x.shape[1])
    h.init_index(max_elements=x.shape[0], M=params.M, ef_construction=params.ef_construction)
    h.add_items(x, np.arange(x.shape[0]), num_threads=-1)
    return h, time.perf_counter() - t, resources.peak_growth_mib(rss)


def build_ours(x: np.ndarray, params: IndexParams, ids: list[str]) -> tuple[Index, float, float]:
    rss = resources.reset_peak()
    t = time.perf_counter()
    index = Index(x.shape[1], params, capacity=x.shape[0])
    for s in range(0, x.shape[0], 65536):  # the way Engine.build feeds it: chunk by chunk
        index.add(ids[s : s + 65536], x[s : s + 65536])
    return index, time.perf_counter() - t, resources.peak_growth_mib(rss)


def sweep_raw(h: Any, q: np.ndarray, truth: np.ndarray, efs: tuple[int, ...], n_lat: int) -> list[dict]:
    out = []
    for ef in efs:
        h.set_ef(ef)
        labels, _ = h.knn_query(q, k=K, num_threads=1)  # (nq, K)
        lat = latency(lambda i: h.knn_query(q[i % len(q)][None], k=K, num_threads=1), n_lat)
        out.append({"ef": ef, "recall@10": round(recall_at_k(labels, truth), 4), **lat})
    return out


def sweep_ours(index: Index, q: np.ndarray, truth: np.ndarray, efs: tuple[int, ...], n_lat: int,
               row_of: dict[str, int]) -> list[dict]:
    out = []
    for ef in efs:
        index.set_ef(ef)
        hits = index.search(q, K, exact=False)
        labels = np.array([[row_of[d] for d, _ in h] + [-1] * (K - len(h)) for h in hits])  # (nq, K)
        lat = latency(lambda i: index.search(q[i % len(q)][None], K, exact=False), n_lat)
        out.append({"ef": ef, "recall@10": round(recall_at_k(labels, truth), 4), **lat})
    return out


def clone(index: Index) -> Index:
    """A deep copy through the index's own file format (what a restart would load)."""
    with tempfile.TemporaryDirectory(prefix="hce-bench-") as tmp:
        write_index(index, tmp)
        counts = {"labels": index.num_labels, "live": len(index), "capacity": index.capacity}
        return read_index(tmp, index.dim, index.params, counts)


def deletions(index: Index, x: np.ndarray, q: np.ndarray, ids: list[str], fracs: tuple[float, ...],
              ef: int, n_lat: int, seed: int) -> list[dict]:
    """Delete cumulative fractions (tombstones only), measure; then measure a compacted copy."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    index.set_ef(ef)
    done = 0
    out = []
    for frac in fracs:
        upto = int(frac * len(ids))
        index.delete([ids[i] for i in order[done:upto]])  # tombstones only: compaction is the store's policy
        done = upto
        live = np.sort(order[upto:])
        row_of = {ids[r]: j for j, r in enumerate(live.tolist())}
        _, truth = topk_inner_product(x[live], q, K)  # (nq, K) rows into x[live]
        row = {"deleted_fraction": frac, "live": len(index)}
        for phase, idx in (("tombstoned", index), ("compacted", None)):
            if idx is None:
                idx = clone(index)
                t = time.perf_counter()
                idx.compact()
                row["compact_seconds"] = round(time.perf_counter() - t, 2)
                idx.set_ef(ef)
            r = sweep_ours(idx, q, truth, (ef,), n_lat, row_of)[0]
            row[phase] = {"recall@10": r["recall@10"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]}
        out.append(row)
        log.info("deleted %.0f%%: %s", frac * 100, row)
    return out


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    x = synthetic.clustered(n, DIM, args.clusters, args.seed)  # (n, DIM)
    q = synthetic.clustered(args.queries, DIM, args.clusters, args.seed, noise_seed=args.seed + 1)  # (nq, DIM)
    ids = [f"d{i}" for i in range(n)]
    params = IndexParams(M=args.M, ef_construction=args.ef_construction, exact_threshold=0)
    t = time.perf_counter()
    _, truth = topk_inner_product(x, q, K)  # (nq, K)
    exact_ms = (time.perf_counter() - t) / len(q) * 1e3
    res: dict[str, Any] = {"n": n, "exact_search_ms_per_query_batched": round(exact_ms, 3)}

    h, secs, mem = build_raw(x, params)
    res["raw_hnswlib"] = {"build_seconds": round(secs, 2), "peak_rss_growth_mib": mem,
                          "sweep": sweep_raw(h, q, truth, EFS, args.latency_queries)}
    del h
    index, secs, mem = build_ours(x, params, ids)
    row_of = {d: i for i, d in enumerate(ids)}
    res["hce_index"] = {"build_seconds": round(secs, 2), "peak_rss_growth_mib": mem,
                        "sweep": sweep_ours(index, q, truth, EFS, args.latency_queries, row_of)}
    res["overhead_p50_ratio_by_ef"] = {
        str(a["ef"]): round(b["p50_ms"] / a["p50_ms"], 3)
        for a, b in zip(res["raw_hnswlib"]["sweep"], res["hce_index"]["sweep"], strict=True)}
    log.info("n=%d raw build %.1fs, ours %.1fs", n, res["raw_hnswlib"]["build_seconds"], secs)
    if n in args.delete_at:
        res["deletions"] = deletions(index, x, q, ids, (0.1, 0.3, 0.5), args.delete_ef, args.latency_queries,
                                     args.seed)
    return res


def plot(results: list[dict], out: Path) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        for key, style in (("hce_index", "-o"), ("raw_hnswlib", "--x")):
            sw = r[key]["sweep"]
            ax.plot([s["p50_ms"] for s in sw], [s["recall@10"] for s in sw], style,
                    label=f"{r['n']:,} {'Index' if key == 'hce_index' else 'raw hnswlib'}")
    ax.set_xscale("log")
    ax.set_xlabel("single-query p50 latency, ms (1 thread, log)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title("HNSW recall vs latency across ef (384-d, M=16, efC=200; 2-core CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figures.save_figure(fig, out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "index-scale")
    ap.add_argument("--sizes", default=None, help="comma-separated sizes (overrides the mode)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--latency-queries", type=int, default=None)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--delete-at", default="100000", help="sizes at which to run the deletion study")
    ap.add_argument("--delete-ef", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    one = ap.add_argument_group("one box (issue 13)")
    one.add_argument("--one-box", type=int, default=None, metavar="N", help="run the one-box study at N documents")
    one.add_argument("--options-size", type=int, default=0, help="documents for the memory options (0: skip)")
    one.add_argument("--efs", default="50,100,200,400", help="ef values of the one-box sweep")
    one.add_argument("--recall-queries", type=int, default=200, help="queries with exact ground truth")
    one.add_argument("--branching", type=int, default=32, help="tree branching")
    one.add_argument("--leaf-size", type=int, default=16, help="tree leaf size")
    one.add_argument("--ivf-nlist", type=int, default=0, help="also faiss IVF with this many cells (0: skip)")
    one.add_argument("--ivf-codes", default="Flat", help="';'-separated IVF vector storages (faiss factory suffixes): "
                     "Flat, SQ8, SQ8,RFlat, SQ8,Refine(SQfp16), PQ96x4fs,RFlat, ...")
    one.add_argument("--refine-k-factor", type=int, default=4,
                     help="candidates re-ranked per hit by the Refine storages")
    one.add_argument("--ivf-only", action="store_true", help="skip the tree and hnswlib: only the IVF sweeps")
    one.add_argument("--index-type", choices=("hnsw", "ivf-sq8"), default="hnsw",
                     help="hce's index kind to build, save, load and sweep (ivf-sq8: --ivf-nlist cells, 0 = auto; "
                          "--nprobes; --refine-k-factor)")
    one.add_argument("--no-tree", action="store_true", help="skip the corpus tree (documents without leaves)")
    one.add_argument("--ivf-train", type=int, default=200_000, help="rows the IVF cells are trained on")
    one.add_argument("--nprobes", default="1,2,4,8,16", help="nprobe values of the IVF sweep")
    one.add_argument("--search-threads", default="1", help="comma-separated threads a query is searched with, "
                     "timed interleaved (an ivf-sq8 index splits a lone query's cells between them)")
    one.add_argument("--tmp", default=None, help="folder for the saved index (default: the system's temp)")
    ap.set_defaults(result_name="index-scale")
    args = cli.parse(ap, argv)
    if args.one_box:
        return one_box_main(args)
    sizes = [int(s) for s in (args.sizes or ("10000,100000" if args.quick else "10000,100000,1000000")).split(",")]
    args.delete_at = {int(s) for s in args.delete_at.split(",")}
    args.latency_queries = args.latency_queries or (300 if args.quick else 1000)
    t0 = time.perf_counter()
    results = [run_size(n, args) for n in sizes]
    plot(results, paths.plot_path(args.out, "recall-latency"))
    payload = {"benchmark": "index_scale", "mode": "quick" if args.quick else "full", "dim": DIM,
               "data": f"synthetic: {args.clusters}-centre Gaussian mixture, unit vectors, seed {args.seed}",
               "params": {"M": args.M, "ef_construction": args.ef_construction, "k": K, "build_threads": "all (2)",
                          "search_threads": 1}, "queries": args.queries, "latency_queries": args.latency_queries,
               "wall_seconds": round(time.perf_counter() - t0, 1), "sizes": results}
    print(provenance.write_result(args.out, payload, __file__))
    return 0


def one_box_main(args: argparse.Namespace) -> int:
    args.efs = [int(e) for e in args.efs.split(",")]
    args.nprobes = [int(p) for p in args.nprobes.split(",")]
    args.search_threads = tuple(int(t) for t in args.search_threads.split(","))
    args.ivf_codes = [c.strip() for c in args.ivf_codes.split(";") if c.strip()]
    if args.ivf_only and not args.ivf_nlist:
        raise SystemExit("index_scale: --ivf-only needs --ivf-nlist")
    if args.ivf_only and args.index_type != "hnsw":
        raise SystemExit("index_scale: --ivf-only skips the index that --index-type chooses")
    args.latency_queries = args.latency_queries or (300 if args.quick else 1000)
    args.recall_queries = min(args.recall_queries, args.queries)
    defaults = {paths.result_path(n).name for n in ("index-scale", "index-scale-quick")}  # --out not given
    default_out = paths.result_path(f"index-scale-one-box{'-quick' if args.quick else ''}")
    out = default_out if args.out.name in defaults else args.out
    payload = {"benchmark": "index_scale", "mode": "one-box", "data": f"synthetic: {args.clusters}-centre Gaussian "
               f"mixture, unit vectors, seed {args.seed}",
               "params": {"M": args.M, "ef_construction": args.ef_construction, "k": K, "build_threads": "all",
               "search_threads": list(args.search_threads),
               "tree": {"branching": args.branching, "leaf_size": args.leaf_size}, "ivf_nlist": args.ivf_nlist,
               "ivf_codes": args.ivf_codes, "refine_k_factor": args.refine_k_factor, "ivf_only": args.ivf_only,
               "index_type": args.index_type, "no_tree": args.no_tree},
               "queries": args.queries,
               "latency_queries": args.latency_queries,
               "result": one_box.run(args.one_box, args)}
    print(provenance.write_result(out, payload, __file__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
