"""Malformed-input fuzzing of every HCE parser and loader with hypothesis.

Each target turns one generated input into a file (or a folder, or a request) and runs the real loader on
it. The only outcomes allowed are a clean result or a project error (``HCEError``: one line, exit 1 on the
CLI, 4xx over HTTP); anything else is a *traceback* and is recorded with its input. Inputs are valid
artifacts mutated, structurally valid documents with random values in random fields, and random bytes
(``fuzz_inputs``).

``python -m tests.reliability.fuzz --cases 10000 [--export EXPORT_DIR]`` spreads the cases over the
targets and writes the counts into benchmarks/results/reliability.json. tests/test_fuzz_loaders.py runs
each target briefly in strict mode (the first traceback fails the test, shrunk by hypothesis).
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from benchmarks.harness import cli, provenance
from hce_serve.errors import HCEError

from .fuzz_inputs import bytes_of, jsonl, mutated, replace_field, tree_arrays, wal_records

DIM = 8


class Fuzzer:
    """Valid sample artifacts in ``workdir`` and one target per loader. ``run`` tallies the outcomes."""

    def __init__(self, workdir: Path, export: Path | None = None) -> None:
        self.dir = workdir
        self.export = export
        self.tally: dict[str, Counter] = {}
        self.tracebacks: list[dict[str, str]] = []
        self._n = 0
        self._samples()

    # ---- valid samples -----------------------------------------------------------------------------
    def _samples(self) -> None:
        from hce_serve.folder.store import IndexStore
        from hce_serve.formats.card import ModelCard
        from hce_serve.formats.tree import Tree
        from hce_serve.index.index import Index
        from hce_serve.options import IndexParams

        d = self.dir / "samples"
        d.mkdir(parents=True, exist_ok=True)
        docs = [{"_id": f"d{i}", "title": f"t{i}", "text": f"text of document {i}"} for i in range(6)]
        self.corpus = "".join(json.dumps(x) + "\n" for x in docs).encode()
        self.queries = "".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(4)).encode()
        self.qrels = b"query-id\tcorpus-id\tscore\n" + b"".join(f"q{i}\td{i}\t1\n".encode() for i in range(4))
        self.run_file = b"".join(f"q{i} Q0 d{j} {j + 1} {1 - j / 10:.6f} hce\n".encode() for i in range(3)
                                 for j in range(3))
        ModelCard(dim=DIM, base_model="tiny", tree={"levels": 1}, onnx={"files": {"int8": "model_int8.onnx"}}).save(d)
        self.card = json.loads((d / "hce_model.json").read_text())
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((12, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        parent = np.array([-1, 0, 0], np.int32)
        tree = Tree(parent, rng.standard_normal((3, DIM)).astype(np.float32), np.array([1, 1, 2, 2], np.int32),
                    ["a", "b", "c", "d"])
        tree.save(d / "tree")
        self.tree_dir = d / "tree"
        idx = Index(DIM, IndexParams(M=4, ef_construction=16, exact_threshold=0), capacity=16)
        idx.add([f"d{i}" for i in range(10)], vecs[:10], leaves=np.arange(10) % 3)
        self.index_dir = d / "idx"
        IndexStore.create(self.index_dir, idx, None)
        with IndexStore.open(self.index_dir, writable=True) as s:  # a log with one add and one delete to replay
            s.add(["n1", "n2"], vecs[10:12])
            s.delete(["d3"])
        self.manifest = json.loads((self.index_dir / "manifest.json").read_text())
        self.gen = self.manifest["extra"]["data_dir"]

    # ---- targets -----------------------------------------------------------------------------------
    def targets(self) -> dict[str, tuple[st.SearchStrategy, Callable[[Any], Any]]]:
        from hce_serve.folder.manifest import IndexManifest
        from hce_serve.formats import beir, trec
        from hce_serve.formats.card import ModelCard
        from hce_serve.formats.tree import Tree

        def file_target(name: str, loader: Callable[[Path], Any]) -> Callable[[bytes], Any]:
            def fn(data: bytes) -> Any:
                p = self._scratch() / name
                p.write_bytes(data)
                return loader(p)
            return fn

        def gz(data: bytes) -> Any:
            p = self._scratch() / "corpus.jsonl.gz"
            p.write_bytes(data)
            return beir.load_corpus(p.with_suffix(""))

        t: dict[str, tuple[st.SearchStrategy, Callable[[Any], Any]]] = {
            "corpus_jsonl": (bytes_of(self.corpus) | jsonl(("_id", "title", "text")),
                             file_target("c.jsonl", beir.load_corpus)),
            "corpus_gzip": (mutated(gzip.compress(self.corpus)) | jsonl(("_id", "text")).map(gzip.compress), gz),
            "queries_jsonl": (bytes_of(self.queries) | jsonl(("_id", "text")),
                              file_target("q.jsonl", beir.load_queries)),
            "qrels_tsv": (bytes_of(self.qrels), file_target("qrels.tsv", beir.load_qrels)),
            "trec_run": (bytes_of(self.run_file), file_target("run.trec", trec.read_run)),
            "model_card": (bytes_of(json.dumps(self.card).encode()) | replace_field(self.card),
                           lambda b: self._in_folder("hce_model.json", b, ModelCard.load)),
            "manifest": (bytes_of(json.dumps(self.manifest).encode()) | replace_field(self.manifest),
                         lambda b: self._in_folder("manifest.json", b, IndexManifest.load)),
            "tree_npz": (mutated((self.tree_dir / "tree.npz").read_bytes()) | tree_arrays(DIM),
                         lambda b: self._tree_case("tree.npz", b, Tree.load)),
            "tree_ids": (bytes_of((self.tree_dir / "tree_doc_ids.txt").read_bytes()),
                         lambda b: self._tree_case("tree_doc_ids.txt", b, Tree.load)),
        }
        for rel in (f"{self.gen}/hnsw.bin", f"{self.gen}/ids.txt", f"{self.gen}/deleted.npy", f"{self.gen}/leaves.npy",
                    "manifest.json"):
            base = (self.index_dir / rel).read_bytes()
            strat = mutated(base) if rel.endswith("hnsw.bin") else bytes_of(base)
            if rel == "manifest.json":
                strat = strat | replace_field(self.manifest)
            t["index:" + rel.split("/")[-1]] = (strat, lambda b, rel=rel: self._index_case(rel, b))
        wal = f"wal-{self.manifest['generation']:06d}.log"
        t["index:wal"] = (bytes_of((self.index_dir / wal).read_bytes()) | wal_records(DIM, self.manifest["generation"]),
                          lambda b: self._index_case(wal, b))
        if self.export is not None:
            for name in ("hce_model.json", "tokenizer.json", "model_int8.onnx"):
                base = (self.export / name).read_bytes()
                t["export:" + name] = (mutated(base), lambda b, name=name: self._export_case(name, b))
        return t

    def _scratch(self) -> Path:
        self._n += 1
        p = self.dir / "cases" / str(self._n % 4)
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
        return p

    def _in_folder(self, name: str, data: bytes, loader: Callable[[Path], Any]) -> Any:
        p = self._scratch()
        (p / name).write_bytes(data)
        return loader(p)

    def _tree_case(self, name: str, data: bytes, loader: Callable[[Path], Any]) -> Any:
        p = self._scratch() / "tree"
        shutil.copytree(self.tree_dir, p)
        (p / name).write_bytes(data)
        return loader(p)

    def _index_case(self, rel: str, data: bytes) -> Any:
        from hce_serve.folder.store import IndexStore

        p = self._scratch() / "idx"
        shutil.copytree(self.index_dir, p)
        (p / rel).write_bytes(data)
        # hnsw.bin is only ever handed to hnswlib behind its checksum; the other files are also loaded unchecked.
        for checksums in ((True,) if rel.endswith("hnsw.bin") else (True, False)):
            with IndexStore.open(p, checksums=checksums) as s:
                s.index.search(np.ones((1, DIM), np.float32), 5)
        with IndexStore.open(p, writable=True) as s:  # a writer's open also replays, cleans and truncates
            s.delete(["d1"])
            s.save()

    def _export_case(self, name: str, data: bytes) -> Any:
        from hce_serve.encoder import Encoder

        p = self._scratch() / "export"
        shutil.copytree(self.export, p)
        (p / name).write_bytes(data)
        enc = Encoder(p, threads=1)
        return enc.encode_queries(["a query"]), enc.encode_documents(["a document", "another one"])

    # ---- running -----------------------------------------------------------------------------------
    def run(self, name: str, n: int, strict: bool) -> Counter:
        """Try ``n`` generated inputs on target ``name``. strict: let a traceback fail (and shrink)."""
        strat, fn = self.targets()[name]
        tally = self.tally.setdefault(name, Counter())

        @settings(max_examples=n, deadline=None, database=None, derandomize=strict,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate] if not strict else list(Phase))
        @given(strat)
        def prop(x: Any) -> None:
            tally["cases"] += 1
            try:
                fn(x)
                tally["ok"] += 1
            except HCEError as e:
                tally["hce_error"] += 1
                if "\n" in str(e).strip():
                    tally["multiline_message"] += 1
            except Exception as e:
                tally["traceback"] += 1
                if strict:
                    raise
                if len(self.tracebacks) < 50:
                    self.tracebacks.append({"target": name, "error": f"{type(e).__name__}: {str(e)[:300]}",
                                            "input": repr(x)[:300], "where": traceback.format_exc(limit=-2)[-600:]})

        prop()
        return tally


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "reliability", quick=False)
    ap.add_argument("--cases", type=int, default=10_000, help="total cases over all file targets")
    ap.add_argument("--export", type=Path, default=None, help="an EXPORT_DIR to fuzz the encoder loader too")
    a = cli.parse(ap, argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hce-fuzz-") as tmp:
        fz = Fuzzer(Path(tmp), a.export)
        names = list(fz.targets())
        heavy = [n for n in names if n.startswith("export:")]
        per = a.cases // (len(names) - len(heavy) + len(heavy) / 10)
        for name in names:
            t = time.perf_counter()
            c = fz.run(name, max(1, int(per / 10 if name in heavy else per)), strict=False)
            print(f"{name}: {dict(c)} in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    total: Counter = Counter()
    for c in fz.tally.values():
        total.update(c)
    payload = {"cases": total["cases"], "tracebacks": total["traceback"], "clean_results": total["ok"],
               "project_errors": total["hce_error"], "multiline_messages": total["multiline_message"],
               "per_target": {k: dict(v) for k, v in fz.tally.items()}, "traceback_examples": fz.tracebacks[:10],
               "seconds": round(time.perf_counter() - t0, 1), "export": str(a.export) if a.export else None}
    provenance.write_result(a.out, payload, __file__, section="fuzz_files")
    print(json.dumps({k: payload[k] for k in ("cases", "tracebacks", "clean_results", "project_errors")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
