"""What ``benchmarks/latency.py`` times: per system, four closures over a query index ``i`` (end to end,
encode only, search only, a batched call), built for one thread count.

- ``floor``: the least work a query can cost (tokenizer -> bare ORT session -> bare hnswlib, no checks, no ids).
- ``hce_engine``: the Engine's Python API with the query cache off (every query pays the encoder), ids and
  scores only; ``hce_engine_docs`` adds the stored title/text/metadata of every hit, as a search in the CLI,
  the HTTP API and the Python API does by default.
- ``hce_engine_cache_hit``: the same Engine path with every query already in the query cache: its encode
  column is the hit path (key + lookup), its end-to-end column a repeated query.
- ``hce_engine_shallow``: where the export has a distilled query graph (``hce-train distill-query``), the
  same Engine with queries through it (``query_encoder="shallow"``); ``hce_engine`` then runs the full one.
- ``torch_exact``: the research-code path, the training encoder's torch forward and numpy exact search.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.encoders import pad_encodings
from hce_serve.encoder import disabled_optimizers
from hce_serve.index.exact import topk_inner_product

K = 10
QUERY_MAX_LENGTH = 64
Fns = tuple[Callable[[int], object], Callable[[int], object], Callable[[int], object], Callable[[list[str]], object]]


class Floor:
    """The least work a query can cost: tokenizer -> bare ORT session -> bare hnswlib, no checks, no ids."""

    def __init__(self, export_dir: Path, variant: str, hnsw_path: Path, count: int, threads: int, ef: int) -> None:
        import hnswlib
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from hce_serve.formats.card import ModelCard

        card = ModelCard.load(export_dir)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        cpu = ["CPUExecutionProvider"]  # the session options the Engine's sessions get (encoder.disabled_optimizers)
        self.sess = ort.InferenceSession(str(export_dir / card.onnx["files"][variant]), so, providers=cpu,
                                         disabled_optimizers=disabled_optimizers(cpu))
        self.names = [i.name for i in self.sess.get_inputs()]
        self.tok = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=QUERY_MAX_LENGTH)
        self.h = hnswlib.Index(space="ip", dim=card.dim)
        self.h.load_index(str(hnsw_path), max_elements=count)
        self.h.set_ef(ef)

    def encode(self, texts: list[str]) -> np.ndarray:
        ids, mask = pad_encodings(self.tok.encode_batch(texts))  # (b, L) each
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self.sess.run(["sentence_embedding"], {k: feed[k] for k in self.names})[0]  # (b, dim)

    def search(self, vecs: np.ndarray, threads: int = 1) -> np.ndarray:
        return self.h.knn_query(vecs, k=K, num_threads=threads)[0]


class TorchExact:
    """The research-code path: the training encoder's torch forward (eager) and numpy exact search."""

    def __init__(self, model_dir: Path, matrix: np.ndarray) -> None:
        from hce_train.model import HCEEncoder

        self.enc = HCEEncoder.load(model_dir)
        self.matrix = matrix

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.enc.encode(texts, QUERY_MAX_LENGTH, progress=False)  # (b, dim)

    def search(self, vecs: np.ndarray) -> np.ndarray:
        return topk_inner_product(self.matrix, vecs, K)[1]


def systems(floor: Floor, eng: Any, cached: Any, tq: TorchExact, queries: list[str], t: int,
            shallow: Any = None) -> dict[str, Fns]:
    """Per system: (end to end, encode only, search only, batched call) closures over query index i.

    ``eng`` is an Engine with its query cache off and the full query encoder; ``cached`` one over the same
    folder whose cache already holds every query (``warm_cache``); ``shallow`` (or None) one whose queries go
    through the export's distilled query graph.
    """
    q1 = [[q] for q in queries]
    fv = floor.encode(queries[:1])  # (1, dim): a fixed vector for the search-only loops
    ev = eng.encoder.encode_queries(queries[:1])
    docs = {} if not eng.stores_documents else {
        "hce_engine_docs": (lambda i: eng.search_batch(q1[i % len(q1)], K),
                            lambda i: eng.encoder.encode_queries(q1[i % len(q1)]),
                            lambda i: eng.store.get([d for d, _ in eng.store.index.search(ev, K)[0]]),
                            lambda b: eng.search_batch(b, K, num_threads=t))}
    return {
        "floor": (lambda i: floor.search(floor.encode(q1[i % len(q1)])), lambda i: floor.encode(q1[i % len(q1)]),
                  lambda i: floor.search(fv), lambda b: floor.search(floor.encode(b), t)),
        "hce_engine": (lambda i: eng.search_batch(q1[i % len(q1)], K, fields=()),
                       lambda i: eng.encoder.encode_queries(q1[i % len(q1)]),
                       lambda i: eng.store.index.search(ev, K),
                       lambda b: eng.search_batch(b, K, fields=(), num_threads=t)),
        **docs,
        **({} if shallow is None else {"hce_engine_shallow": (
            lambda i: shallow.search_batch(q1[i % len(q1)], K, fields=()),
            lambda i: shallow.encoder.encode_queries(q1[i % len(q1)]),
            lambda i: shallow.store.index.search(ev, K),
            lambda b: shallow.search_batch(b, K, fields=(), num_threads=t))}),
        "hce_engine_cache_hit": (lambda i: cached.search_batch(q1[i % len(q1)], K, fields=()),
                                 lambda i: cached.query_vectors(q1[i % len(q1)]),
                                 lambda i: cached.store.index.search(ev, K),
                                 lambda b: cached.search_batch(b, K, fields=(), num_threads=t)),
        "torch_exact": (lambda i: tq.search(tq.encode(q1[i % len(q1)])), lambda i: tq.encode(q1[i % len(q1)]),
                        lambda i: tq.search(fv), lambda b: tq.search(tq.encode(b))),
    }


def warm_cache(cached: Any, queries: list[str]) -> None:
    """Put every query in ``cached``'s query cache, one at a time as the timed calls ask, and check that a
    second pass is all hits (a cache smaller than the query set would time misses as hits)."""
    for q in queries:
        cached.query_vectors([q])
    before = cached.query_cache.stats()["hits"]
    for q in queries:
        cached.query_vectors([q])
    if (got := cached.query_cache.stats()["hits"] - before) != len(queries):
        raise RuntimeError(f"query cache answered {got} of {len(queries)} warmed queries (capacity too small?)")
