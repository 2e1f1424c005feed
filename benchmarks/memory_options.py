"""Where the memory of a one-box index goes, and what the alternatives cost (``one_box.py``, issue 13).

Measured on the first m documents of the one-box mixture, in this process, one after the other, each with
the same M / efConstruction and the one-box study's chosen ef; the per-vector RSS growth is projected to the
study's N. Options:

- ``hnswlib_fp32``: hnswlib keeps every vector as float32 inside its graph (4 x dim bytes) plus its links;
  what ``hce_serve.Index`` holds, without the id table.
- ``faiss_hnsw_fp16``: the same HNSW graph over fp16 vectors (faiss ``IndexHNSWSQ`` with ``QT_fp16``): half
  the vector bytes; recall and latency say what fp16 distances cost.
- ``milvus_lite_hnsw``: the Milvus backend (``hce_serve.milvus_client``) on milvus-lite in this process. On
  one box it spends more memory, not less (segments in Arrow plus a faiss index per segment); its point is
  that a Milvus cluster spreads the same collection over query nodes.

``ivf_sweep`` is the other kind of index, at the study's full N: faiss IVF (k-means cells, a scan of the
``nprobe`` nearest cells) with the cells' vectors stored as ``codes``, a faiss factory suffix: ``Flat`` (fp32,
the structure Milvus' ``IVF_FLAT`` builds), ``SQ8`` (one byte per dimension: a quarter of the bytes a probe
reads; Milvus' ``IVF_SQ8``), ``SQ8,RFlat`` (SQ8 candidates re-ranked on fp32 copies: ``k_factor`` x k of them)
or ``SQ8,Refine(SQfp16)`` (re-ranked on fp16 copies), ``PQ96x4fs,RFlat`` (4-bit product-quantizer codes scanned
with SIMD look-up tables, 48 bytes a vector, then re-ranked on fp32); recall and single-query latency per nprobe
against the same exact truth, and the bytes each vector costs (codes plus any re-ranking copy).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import resources
from benchmarks.harness.synthetic import K, Mixture, exact_topk
from benchmarks.harness.timing import latency
from hce_serve.index.exact import recall_at_k

log = logging.getLogger(__name__)


def measure(name: str, build: Callable[[], Any], search: Callable[[Any, np.ndarray], np.ndarray], m: int, n_target: int,
            q: np.ndarray, truth: np.ndarray, n_lat: int) -> dict[str, Any]:
    """Build (timed, RSS growth), recall@10 on the truth queries, single-query latency."""
    _release_freed_memory()
    rss0, t0 = resources.reset_peak(), time.perf_counter()
    index = build()
    secs, grown = time.perf_counter() - t0, resources.rss_mib() - rss0
    labels = search(index, q[: truth.shape[0]])  # (nr, K) rows
    out = {"build_seconds": round(secs, 1), "rss_growth_mib": round(grown, 1),
           "bytes_per_vector": round(grown * 2**20 / m, 1), "projected_gib": round(grown * n_target / m / 1024, 2),
           "recall@10": round(recall_at_k(labels, truth), 4),
           **latency(lambda i: search(index, q[i % len(q)][None]), n_lat)}
    log.info("%s: %s", name, out)
    return out  # the index goes with this frame; the caller collects it before the next option


def _release_freed_memory() -> None:
    """Collect, and hand freed heap back to the OS (glibc): RSS growth then counts this option alone."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: growth may be understated after a freed option
        pass


Option = tuple[Callable[[], Any], Callable[[Any, np.ndarray], np.ndarray], Callable[[], None]]  # build, search, close


def hnswlib_option(mix: Mixture, m: int, args: argparse.Namespace, ef: int) -> Option:
    import hnswlib

    def build() -> Any:
        h = hnswlib.Index(space="ip", dim=mix.dim)
        h.init_index(max_elements=m, M=args.M, ef_construction=args.ef_construction)
        for start, blk in mix.blocks(m):
            h.add_items(blk, np.arange(start, start + blk.shape[0]), num_threads=-1)
        h.set_ef(ef)
        return h

    return build, lambda h, x: h.knn_query(x, k=K, num_threads=1)[0], lambda: None


def faiss_fp16_option(mix: Mixture, m: int, args: argparse.Namespace, ef: int) -> Option:
    import faiss

    def build() -> Any:
        index = faiss.IndexHNSWSQ(mix.dim, faiss.ScalarQuantizer.QT_fp16, args.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        for _, blk in mix.blocks(m):
            if not index.is_trained:
                index.train(blk)
            index.add(blk)
        index.hnsw.efSearch = ef
        return index

    def search(index: Any, x: np.ndarray) -> np.ndarray:
        return index.search(x, K)[1]

    return build, search, lambda: None


def milvus_option(mix: Mixture, m: int, args: argparse.Namespace, ef: int, folder: Path) -> Option:
    from hce_serve.milvus.client import MilvusCollection, connect, pymilvus_module, release
    from hce_serve.milvus.layout import CollectionManifest, MilvusTarget, VectorIndex

    target = MilvusTarget(str(folder / "options.db"), "options")
    vindex = VectorIndex.make("HNSW", args.M, args.ef_construction, ef)
    state: dict[str, Any] = {}
    pymilvus_module()  # installed? (raises MissingDependencyError)

    def build() -> Any:
        state["client"] = client = connect(target)
        coll = MilvusCollection.create(client, target.collection, CollectionManifest(mix.dim, "-", False, vindex))
        for start, blk in mix.blocks(m):
            coll.insert([{"id": f"d{start + i}", "vector": v, "leaf": -1, "path": []} for i, v in enumerate(blk)])
        coll.flush()
        with_index = MilvusCollection.open(client, target.collection, target.uri)  # loads the collection
        return with_index

    def search(coll: Any, x: np.ndarray) -> np.ndarray:
        rows = coll.search(x, K, "", vindex.search_params(K, None), ())
        return np.array([[int(i[1:]) for i, _, _ in r] + [-1] * (K - len(r)) for r in rows])

    def close() -> None:
        if "client" in state:
            state.pop("client").close()
            release(target)

    return build, search, close


def ivf_sweep(mix: Mixture, n: int, q: np.ndarray, truth: np.ndarray, args: argparse.Namespace,
              codes: str = "Flat") -> dict[str, Any]:
    """faiss IVF with ``codes`` (module docstring) over all n documents (cells trained on the first
    ``args.ivf_train`` rows), swept over ``args.nprobes``: build seconds, RSS growth, bytes per vector,
    recall@10 and 1-thread p50/p99 per nprobe."""
    import faiss

    _release_freed_memory()
    rss0, t0 = resources.reset_peak(), time.perf_counter()
    index = faiss.index_factory(mix.dim, f"IVF{args.ivf_nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
    top = faiss.downcast_index(index)
    refine = isinstance(top, faiss.IndexRefine)  # RFlat / Refine(...): re-ranked on a copy
    if refine:
        top.k_factor = args.refine_k_factor
    index.train(mix.matrix(min(args.ivf_train, n)))
    trained = time.perf_counter() - t0
    for _, blk in mix.blocks(n):
        index.add(blk)
    out: dict[str, Any] = {"codes": codes, "nlist": args.ivf_nlist, "train_rows": min(args.ivf_train, n),
                           "documents": n, "bytes_per_vector": index.sa_code_size(),
                           "k_factor": args.refine_k_factor if refine else None,
                           "train_seconds": round(trained, 1), "build_seconds": round(time.perf_counter() - t0, 1),
                           "rss_growth_gib": round((resources.rss_mib() - rss0) / 1024, 2),
                           "peak_growth_gib": round(resources.peak_growth_mib(rss0) / 1024, 2),
                           "peak_rss_gib": round(resources.rss_mib("VmHWM") / 1024, 2), "sweep": []}
    ivf = faiss.extract_index_ivf(index)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # searched one query at a time on 1 thread, as the hnswlib sweep
    try:
        for nprobe in args.nprobes:
            ivf.nprobe = nprobe
            labels = index.search(q[: truth.shape[0]], K)[1]
            row = {"nprobe": nprobe, "recall@10": round(recall_at_k(labels, truth), 4),
                   **latency(lambda i: index.search(q[i % len(q)][None], K), args.latency_queries)}
            out["sweep"].append(row)
            log.info("ivf %s nlist %d: %s", codes, args.ivf_nlist, row)
    finally:
        faiss.omp_set_num_threads(threads)
    return out


def run(mix: Mixture, m: int, n_target: int, q: np.ndarray, args: argparse.Namespace, ef: int) -> dict[str, Any]:
    """Every option at m documents (module docstring); an option whose package is missing says so."""
    from hce_serve.errors import MissingDependencyError

    truth = exact_topk(mix, m, q[: args.recall_queries])
    out: dict[str, Any] = {"documents": m, "projected_to": n_target, "ef": ef, "M": args.M,
                           "ef_construction": args.ef_construction}
    with tempfile.TemporaryDirectory(prefix="hce-options-", dir=args.tmp) as tmp:
        makers = {"hnswlib_fp32": lambda: hnswlib_option(mix, m, args, ef),
                  "faiss_hnsw_fp16": lambda: faiss_fp16_option(mix, m, args, ef),
                  "milvus_lite_hnsw": lambda: milvus_option(mix, m, args, ef, Path(tmp))}
        for name, make in makers.items():
            try:
                build, search, close = make()
            except (ImportError, MissingDependencyError) as e:
                out[name] = {"skipped": str(e) if isinstance(e, MissingDependencyError)
                             else f"{e.name} is not installed"}
                continue
            try:
                out[name] = measure(name, build, search, m, n_target, q, truth, args.latency_queries)
            finally:
                close()
                gc.collect()
    return out
