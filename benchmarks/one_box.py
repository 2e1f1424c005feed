"""5M documents on one box: the corpus tree and the hnswlib index over N x 384 clustered synthetic vectors,
saved, loaded and searched through ``hce_serve``'s ``Index`` (issue 13). Run through ``index_scale``:

    nice python -m benchmarks.index_scale --one-box 5000000 --options-size 500000   # the 5M study (hours)
    python -m benchmarks.index_scale --quick --one-box 50000 --options-size 20000   # minutes

Vectors come in fixed blocks drawn from (seed, stream, block) around ``--clusters`` centres
(``harness.synthetic.Mixture``), so a pass over the corpus (index build, exact ground truth) regenerates them instead of
keeping a second copy: the data matrix lives only while the tree is built, then the index alone holds the vectors.
Queries are held out from the same mixture (stream 1), searched one at a time through ``Index.search`` (the serving
path: labels -> string ids, the read lock), never through raw hnswlib, with each of ``--search-threads`` (default 1),
interleaved.

Per phase: wall seconds and the process's peak RSS (VmHWM) and RSS after it. Recall@10 against exact search
over ``--recall-queries`` queries, single-query p50/p99 across ``--efs``, and ``chosen_ef``: the smallest with
recall@10 >= .99. With ``--ivf-nlist``, faiss IVF over the same N documents beside it
(``memory_options.ivf_sweep``), once per ``--ivf-codes`` storage (fp32, SQ8, SQ8 re-ranked), swept over
``--nprobes``, each with its first nprobe at recall@10 >= .99 (``ivf``: one row per codes; files written before
``--ivf-codes`` hold one IVF-Flat dict there). ``--ivf-only`` skips the tree and hnswlib (to sweep IVF storages
without the 50-minute hnswlib build measured before). ``--index-type ivf-sq8`` builds hce's own IVF-SQ8 index
kind (``hce_serve.ann_ivf``: cells relearnt as the corpus doubles, deletions, the folder files) instead of
hnswlib and sweeps ``--nprobes`` through ``Index.search``; ``--no-tree`` skips the tree (timed before). Save
(index_io.write_index) and load (read_index) of the index files, timed. Memory options (``memory_options.py``)
at ``--options-size`` documents, their per-vector cost projected to N.
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import memory_options
from benchmarks.harness import resources, timing
from benchmarks.harness.synthetic import K, Mixture, exact_topk
from hce_serve.folder.datafiles import write_index
from hce_serve.folder.recovery import read_index
from hce_serve.index.exact import recall_at_k
from hce_serve.index.index import Index
from hce_serve.options import IndexParams

log = logging.getLogger(__name__)
TARGETS = {"build_minutes": 60, "peak_rss_gib": 16, "recall_at_10": 0.99, "p50_ms": 1.0}  # issue 13, 5M x 384


def phase(name: str, t0: float, rss0: float, out: dict[str, Any]) -> None:
    """Record a phase's wall seconds, peak RSS and RSS now (MiB), and log them."""
    out[name] = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(resources.rss_mib("VmHWM")),
                 "rss_mib": round(resources.rss_mib()), "peak_growth_mib": resources.peak_growth_mib(rss0)}
    log.info("%s: %s", name, out[name])


def build_tree_phase(mix: Mixture, n: int, ids: list[str], args: argparse.Namespace, out: dict[str, Any]) -> np.ndarray:
    """The corpus tree over all n vectors (hce_train's balanced k-means); returns each document's leaf."""
    from hce_train.tree_builder import TreeConfig, build_tree

    rss0, t0 = resources.reset_peak(), time.perf_counter()
    x = mix.matrix(n)  # (n, dim): the one moment the whole matrix is in memory
    phase("generate", t0, rss0, out)
    rss0, t0 = resources.reset_peak(), time.perf_counter()
    tree = build_tree(x, ids, TreeConfig(branching=args.branching, leaf_size=args.leaf_size, seed=args.seed))
    phase("tree_build", t0, rss0, out)
    out["tree_build"]["summary"] = tree.summary()
    leaves = tree.doc_leaf.copy()
    del x, tree
    gc.collect()
    return leaves


def sweep(index: Index, q: np.ndarray, truth: np.ndarray, efs: list[int], n_lat: int,
          threads: tuple[int, ...] = (1,)) -> list[dict[str, Any]]:
    """Recall@10 and single-query latency per ef, at each of ``threads`` (interleaved: ``timing.timed``), with
    the CPU time anything else took meanwhile (``resources.others_cpu``)."""
    rows = []
    for ef in efs:
        hits = index.search(q[: truth.shape[0]], K, ef=ef, exact=False)
        labels = np.array([[int(d[1:]) for d, _ in h] + [-1] * (K - len(h)) for h in hits])  # ids are "d<row>"
        fns = {str(t): (lambda i, ef=ef, t=t: index.search(q[i % len(q)][None], K, ef=ef, num_threads=t, exact=False))
               for t in threads}
        before = resources.cpu_snapshot()
        timings = timing.timed(fns, n_lat, warmup=min(50, n_lat))
        others = resources.others_cpu(before)
        for t in threads:
            rows.append({"ef": ef, "threads": t, "recall@10": round(recall_at_k(labels, truth), 4),
                         **timings[str(t)].stats(), **others})
            log.info("ef %d: %s", ef, rows[-1])
    return rows


def index_study(mix: Mixture, n: int, q: np.ndarray, truth: np.ndarray, args: argparse.Namespace,
                res: dict[str, Any]) -> None:
    """Tree, index build (``--index-type``: hnswlib, or hce's IVF-SQ8 folder kind with ``--ivf-nlist`` cells and
    ``--refine-k-factor``), save, load and the breadth sweep (ef, or nprobe for IVF) at n documents, into ``res``."""
    ids = [f"d{i}" for i in range(n)]
    ph = res["phases"]
    leaves = None if args.no_tree else build_tree_phase(mix, n, ids, args, ph)
    ivf = args.index_type == "ivf-sq8"
    params = IndexParams(M=args.M, ef_construction=args.ef_construction, exact_threshold=0, kind=args.index_type,
                         nlist=args.ivf_nlist if ivf else 0, refine=args.refine_k_factor if ivf else 4)
    res["index_type"], res["index_params"] = args.index_type, params.to_dict()
    rss0, t0 = resources.reset_peak(), time.perf_counter()
    index = Index(384, params, capacity=n)
    with index.bulk_load():  # as Engine.build: an ivf-sq8 index learns its cells once, at the end
        for start, blk in mix.blocks(n):  # chunk by chunk, with each document's leaf, as Engine.build feeds it
            index.add(ids[start : start + blk.shape[0]], blk,
                      None if leaves is None else leaves[start : start + blk.shape[0]])
    phase("index_build", t0, rss0, ph)
    res["build_minutes_tree_plus_index"] = round(sum(ph[p]["seconds"] for p in ("tree_build", "index_build")
                                                     if p in ph) / 60, 1)
    with tempfile.TemporaryDirectory(prefix="hce-one-box-", dir=args.tmp) as tmp:
        rss0, t0 = resources.reset_peak(), time.perf_counter()
        files = write_index(index, tmp)
        phase("save", t0, rss0, ph)
        ph["save"]["bytes"] = {f: (Path(tmp) / f).stat().st_size for f in files}
        counts = {"labels": index.num_labels, "live": len(index), "capacity": index.capacity}
        del index
        gc.collect()
        rss0, t0 = resources.reset_peak(), time.perf_counter()
        index = read_index(tmp, 384, params, counts)
        phase("load", t0, rss0, ph)
    res["sweep"] = sweep(index, q, truth, args.nprobes if ivf else args.efs, args.latency_queries, args.search_threads)
    ok = [r["ef"] for r in res["sweep"] if r["recall@10"] >= TARGETS["recall_at_10"]]
    res["chosen_ef"] = ok[0] if ok else None
    chosen = next((r for r in res["sweep"] if r["ef"] == res["chosen_ef"]), None)  # at the first --search-threads
    res["chosen_p50_ms_by_threads"] = {str(t): [r["p50_ms"] for r in res["sweep"] if r["ef"] == res["chosen_ef"] and
                                                r["threads"] == t] for t in args.search_threads}
    res["targets"] = {**TARGETS, "met": {
        "build_minutes": res["build_minutes_tree_plus_index"] <= TARGETS["build_minutes"],
        "peak_rss_gib": max(p["peak_rss_mib"] for p in ph.values()) / 1024 <= TARGETS["peak_rss_gib"],
        "recall_at_10": chosen is not None, "p50_ms": chosen is not None and chosen["p50_ms"] <= TARGETS["p50_ms"]}}


def run(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """The whole one-box study at n documents (module docstring)."""
    mix = Mixture(384, args.clusters, args.seed)
    res: dict[str, Any] = {"n": n, "dim": 384, "phases": {}}
    t_all = time.perf_counter()
    q = mix.matrix(args.queries, stream=1)  # (nq, dim), held out
    t0 = time.perf_counter()
    truth = exact_topk(mix, n, q[: args.recall_queries])  # (nr, K)
    res["exact_seconds_per_query"] = round((time.perf_counter() - t0) / len(truth), 3)
    if not args.ivf_only:
        index_study(mix, n, q, truth, args, res)
    for codes in args.ivf_codes if args.ivf_nlist else []:
        gc.collect()
        row = memory_options.ivf_sweep(mix, n, q, truth, args, codes)
        row["chosen"] = next((r for r in row["sweep"] if r["recall@10"] >= TARGETS["recall_at_10"]), None)
        res.setdefault("ivf", []).append(row)
    # The high-water mark over all phases: each phase (and each IVF build) resets VmHWM (resources.reset_peak), so
    # the counter alone holds only what came after the last reset; the phases and IVF rows keep their own peaks.
    peaks = {k: p["peak_rss_mib"] / 1024 for k, p in res["phases"].items()}
    peaks.update({f"ivf {r['codes']}": r["peak_rss_gib"] for r in res.get("ivf", [])})
    peaks["last"] = resources.rss_mib("VmHWM") / 1024
    res["peak_phase"] = max(peaks, key=lambda k: peaks[k])
    res["peak_rss_gib"] = round(peaks[res["peak_phase"]], 2)
    res["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    if args.options_size:
        m = min(args.options_size, n)
        res["memory_options"] = memory_options.run(mix, m, n, q, args,
                                                   (res.get("chosen_ef") if res.get("index_type") == "hnsw" else None)
                                                  or max(args.efs))
    return res
