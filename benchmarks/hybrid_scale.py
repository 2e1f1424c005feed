"""Hybrid search at scale, and the choice of lexical engine (issue 29), both by measurement.

``scale_latency``: an index folder of N synthetic documents (text and vectors), searched in dense, lexical
and hybrid mode through the Engine, one thread, interleaved, query cache off, with real SciFact test queries.
- text: each document's length is drawn from SciFact's document lengths (in words), its words i.i.d. from
  SciFact's word frequencies (stop words included, so the analyzer does its real work);
- vectors: unit vectors from a Gaussian mixture (``harness.synthetic``), the HNSW index's usual test load.

``engines``: the lexical engine candidates on the same analysed terms: SQLite FTS5 (a contentless table of
pre-analysed terms, ranked by FTS5's own ``bm25()``) against hce's numpy BM25: build time, size, query p50
and nDCG@10 on SciFact, and query p50 at N synthetic documents.

    python -m benchmarks.hybrid_scale --engines --scale 1000000      # the engine choice at 5k and 1M
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.cli import parse, study_parser
from benchmarks.harness.paths import CACHE, SHARED_DATA
from benchmarks.harness.provenance import stamp, write_result
from benchmarks.harness.synthetic import clustered
from benchmarks.harness.timing import timed
from hce_serve.documents import Document
from hce_serve.formats.beir import load_beir
from hce_serve.lexical import Analyzer, LexicalIndex
from hce_serve.metrics import per_query

log = logging.getLogger(__name__)

WORD = re.compile(r"\S+")


class SyntheticText:
    """Documents whose lengths and words follow SciFact's (see the module docstring); seeded."""

    def __init__(self, seed: int = 0) -> None:
        corpus = load_beir(SHARED_DATA / "scifact", "test").corpus
        counts: Counter[str] = Counter()
        self.lengths = []
        for d in corpus:
            words = WORD.findall(d.full_text)
            counts.update(words)
            self.lengths.append(len(words))
        self.words = np.array(list(counts), dtype=object)
        p = np.array(list(counts.values()), np.float64)
        self.p = p / p.sum()
        self.seed = seed

    def documents(self, n: int, block: int = 10_000) -> Iterator[Document]:
        rng = np.random.default_rng(self.seed)
        lengths = np.array(self.lengths)
        for lo in range(0, n, block):
            m = min(block, n - lo)
            lens = lengths[rng.integers(0, len(lengths), m)]
            flat = self.words[rng.choice(len(self.words), size=int(lens.sum()), p=self.p)]
            at = 0
            for j, ln in enumerate(lens.tolist()):
                yield Document(f"s{lo + j}", "", " ".join(flat[at : at + ln]))
                at += ln


def build_scale_folder(export: Path, n: int, folder: Path) -> dict[str, Any]:
    """An index folder of ``n`` synthetic documents (reused when it is there with the same n)."""
    from hce_serve.folder.store import IndexStore
    from hce_serve.formats.card import ModelCard
    from hce_serve.index.index import Index, IndexParams

    marker = folder / ".hybrid-scale.json"
    if marker.is_file() and json.loads(marker.read_text()).get("n") == n:
        return json.loads(marker.read_text())
    dim = ModelCard.load(export).dim
    t = time.perf_counter()
    docs = list(SyntheticText().documents(n))
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    lex = LexicalIndex.build((d.id, d.full_text) for d in docs)
    lex_s = time.perf_counter() - t
    t = time.perf_counter()
    index = Index(dim, IndexParams(), capacity=n)
    for lo in range(0, n, 100_000):
        m = min(100_000, n - lo)
        index.add([d.id for d in docs[lo : lo + m]], clustered(m, dim, 1000, seed=1, noise_seed=lo + 7))
    vec_s = time.perf_counter() - t
    t = time.perf_counter()
    IndexStore.create(folder, index, export, overwrite=True, documents=docs, lexical=lex)
    write_s = time.perf_counter() - t
    info = {"n": n, "generate_s": round(gen_s, 1), "lexical_build_s": round(lex_s, 1),
            "vector_build_s": round(vec_s, 1), "write_s": round(write_s, 1),
            "lexical_files_mib": round(sum(p.stat().st_size for p in folder.glob("gen-*/lexical*")) / 2**20, 1),
            "text": "lengths from SciFact's documents, words i.i.d. from SciFact's word frequencies (seed 0)",
            "vectors": "Gaussian mixture, 1,000 centres, spread .35 (benchmarks.harness.synthetic.clustered)"}
    marker.write_text(json.dumps(info))
    return info


def scale_latency(export: Path, n: int, folder: Path, n_queries: int, settings: dict[str, Any]) -> dict[str, Any]:
    from hce_serve import Engine

    info = build_scale_folder(export, n, folder)
    texts = list(load_beir(SHARED_DATA / "scifact", "test").queries.values())
    with Engine.open(folder, query_cache=0, threads=1) as engine:
        lat = mode_latency(engine, texts, n_queries, settings)
        stats = engine.stats()
    return {"documents": n, "build": info, "latency": lat, "lexical": stats.get("lexical"),
            "lexical_top_k": lexical_kernel()}


def mode_latency(engine: Any, texts: list[str], n: int, settings: dict[str, Any]) -> dict[str, Any]:
    """p50/p99 and CPU per mode, one encoder thread, interleaved (``harness.timing.timed``): dense, lexical and
    hybrid as the engine runs them (hybrid's lexical side beside the encoder, its top k whole), and the
    arrangements the engine's thresholds choose against: hybrid with its lexical side inline (before the
    encoder), and lexical alone with a large top k kept whole instead of split into two row halves."""
    from hce_serve import defaults

    def run(mode: str, **knobs: int):
        extra = settings if mode == "hybrid" else {}

        def call(i: int) -> object:
            saved = {name: getattr(defaults, name) for name in knobs}
            for name, value in knobs.items():
                setattr(defaults, name, value)
            try:
                return engine.search(texts[i % len(texts)], k=10, mode=mode, fields=(), **extra)
            finally:
                for name, value in saved.items():
                    setattr(defaults, name, value)
        return call

    never = 2**62
    systems = {"dense": run("dense"), "lexical": run("lexical"), "hybrid": run("hybrid"),
               "hybrid_inline": run("hybrid", LEXICAL_BACKGROUND_MIN_POSTINGS=never),
               "lexical_whole": run("lexical", COMPILED_TOPK_SLICE_MIN_POSTINGS=never)}
    res = timed(systems, n, warmup=20)
    lat: dict[str, Any] = {m: t.stats() for m, t in res.items()}
    for m in systems:
        if m.startswith("hybrid"):
            lat[f"{m}_over_dense_p50"] = round(lat[m]["p50_ms"] / lat["dense"]["p50_ms"], 3)
            # a lexical side beside the encoder runs on another thread: its CPU cost shows in the process's time
            lat[f"{m}_over_dense_process_cpu_p50"] = round(lat[m]["process_cpu_p50_ms"]
                                                           / lat["dense"]["process_cpu_p50_ms"], 3)
    return lat


def lexical_kernel() -> str:
    """Which BM25 top-k ran: the compiled kernel (numba's version) or numpy's."""
    from hce_serve.lexical import topk

    if topk.compiled():
        import numba

        return f"compiled MaxScore (numba {numba.__version__})"
    return "numpy MaxScore (numba not installed)"


# ---- the engine choice -------------------------------------------------------------------------------
class Fts5:
    """SQLite FTS5 over pre-analysed terms (FTS5's tokenizers have no Snowball stemmer, and Python's sqlite3
    cannot register one): each document's terms joined by spaces, the ``ascii`` tokenizer splitting them
    again. Queries are the analysed terms, each double-quoted (a string, never FTS5 syntax), joined by OR."""

    def __init__(self, path: Path, analyzer: Analyzer) -> None:
        path.unlink(missing_ok=True)
        self.conn = sqlite3.connect(str(path))
        self.conn.execute("CREATE VIRTUAL TABLE t USING fts5(body, content='', tokenize='ascii')")
        self.analyzer = analyzer
        self.ids: list[str] = []

    def add(self, docs: Sequence[tuple[str, str]]) -> None:
        rows = []
        for doc_id, text in docs:
            self.ids.append(doc_id)
            rows.append((len(self.ids), " ".join(self.analyzer.terms(text))))
        self.conn.executemany("INSERT INTO t (rowid, body) VALUES (?, ?)", rows)
        self.conn.commit()

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        terms = dict.fromkeys(self.analyzer.terms(query))
        if not terms:
            return []
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        sql = "SELECT rowid, bm25(t, 1.2, 0.75) AS s FROM t WHERE t MATCH ? ORDER BY s LIMIT ?"
        return [(self.ids[r - 1], -s) for r, s in self.conn.execute(sql, (match, k))]


def compare_engines(n: int, n_queries: int, work: Path) -> dict[str, Any]:
    data = load_beir(SHARED_DATA / "scifact", "test")
    texts = [q for q in data.queries.values()]
    qids = list(data.queries)
    analyzer = Analyzer()
    out: dict[str, Any] = {}
    for label, docs in (("scifact", [(d.id, d.full_text) for d in data.corpus]),
                        (f"synthetic-{n}", None)):
        if docs is None:
            if not n:
                continue
            docs = [(d.id, d.full_text) for d in SyntheticText().documents(n)]
        t = time.perf_counter()
        numpy_idx = LexicalIndex.build(docs, analyzer)
        numpy_s = time.perf_counter() - t
        numpy_dir = work / f"numpy-{label}"
        numpy_idx.save(numpy_dir)
        t = time.perf_counter()
        fts = Fts5(work / f"fts5-{label}.sqlite", analyzer)
        for lo in range(0, len(docs), 10_000):
            fts.add(docs[lo : lo + 10_000])
        fts_s = time.perf_counter() - t
        del docs
        res = timed({"numpy": lambda i, e=numpy_idx: e.search(texts[i % len(texts)], 100),
                     "fts5": lambda i, e=fts: e.search(texts[i % len(texts)], 100)}, n_queries, warmup=10)
        row: dict[str, Any] = {
            "build_s": {"numpy": round(numpy_s, 1), "fts5": round(fts_s, 1)},
            "disk_mib": {"numpy": round(sum(p.stat().st_size for p in numpy_dir.iterdir()) / 2**20, 1),
                         "fts5": round((work / f"fts5-{label}.sqlite").stat().st_size / 2**20, 1)},
            "latency": {k: v.stats() for k, v in res.items()}}
        if label == "scifact":
            for name, eng in (("numpy", numpy_idx), ("fts5", fts)):
                run = {q: {d: float(100 - r) for r, (d, _) in enumerate(eng.search(data.queries[q], 100))}
                       for q in qids}
                row.setdefault("ndcg@10", {})[name] = round(100 * float(np.mean(list(
                    per_query(data.qrels, run)["ndcg@10"].values()))), 2)
        out[label] = row
        fts.conn.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = study_parser(__doc__, "hybrid-engines")
    ap.add_argument("--study", choices=("engines", "latency"), default="engines",
                    help="engines: FTS5 vs numpy BM25; latency: the three modes through the Engine at --scale")
    ap.add_argument("--scale", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300, help="timed queries per system (per mode for latency)")
    args = parse(ap, argv)
    if args.quick:
        args.scale, args.queries = 20_000, 100
    if args.study == "latency":
        from benchmarks.encoders import base_model_path, ensure_export
        from hce_serve import defaults

        export = ensure_export("minilm", str(base_model_path()), quantize=True)
        settings = {"fusion": defaults.FUSION, "alpha": defaults.ALPHA, "depth": defaults.FUSION_DEPTH}
        res = {"scale": scale_latency(export, args.scale, CACHE / "hybrid" / "minilm" / "scale", args.queries,
                                      settings), "settings": settings, **stamp()}
        write_result(args.out, res, __file__, " ".join(sys.argv[1:]) or "(defaults)")
        print(json.dumps(res["scale"]["latency"], indent=1))
        return 0
    work = CACHE / "hybrid-engines"
    work.mkdir(parents=True, exist_ok=True)
    res = {"engines": compare_engines(args.scale, args.queries, work), **stamp()}
    write_result(args.out, res, __file__, " ".join(sys.argv[1:]) or "(defaults)")
    print(json.dumps(res["engines"], indent=1))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("HCE_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
