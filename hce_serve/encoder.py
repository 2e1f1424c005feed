"""Text -> L2-normalised embedding with an EXPORT_DIR's ONNX graph and fast tokenizer (no torch).

The graph written by ``hce-export onnx`` already pools and normalises (output ``sentence_embedding``,
shape (batch, dim)), so serving is: tokenize, pad to the batch's longest, run, re-normalise. Texts are
sorted by length and batched under a token budget so one long document does not make a whole batch
pay for its padding; results come back in input order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import defaults
from .batching import progress_bar
from .errors import ConfigError, FormatError, missing_dependency
from .formats.card import ModelCard
from .options import EngineOptions
from .qcache import query_key_function

log = logging.getLogger(__name__)

VARIANTS = EngineOptions.VARIANTS
QUERY_ENCODERS = EngineOptions.QUERY_ENCODERS  # auto: the distilled query graph when the export has one
OUTPUT_NAME = "sentence_embedding"
TOKEN_BUDGET = 16384  # padded tokens per session.run: bounds activation memory, keeps batches efficient
MAX_BATCH = 128
# A text joins a batch only if padding it to the batch's longest costs at most this many tokens (or an
# eighth of the width): a session.run has a fixed cost of a few tokens' work, so splitting a batch is worth it
# only when it saves more padding than that, and texts of mixed lengths padded together waste most of a batch.
PAD_SLACK = 8
CUDA = "CUDAExecutionProvider"


def disabled_optimizers(providers: Sequence[str]) -> list[str]:
    """ORT rewrites to skip: ``defaults.ORT_CPU_DISABLED_OPTIMIZERS`` on a CPU-only session (slower there)."""
    return list(defaults.ORT_CPU_DISABLED_OPTIMIZERS) if all(p == "CPUExecutionProvider" for p in providers) else []


def _files(card: ModelCard, where: Path) -> dict[str, str]:
    files = (card.onnx or {}).get("files")
    if not isinstance(files, dict) or not files:
        raise FormatError(f"{where}/hce_model.json: no onnx.files entry; export the model with hce-export onnx")
    return {str(k): str(v) for k, v in files.items() if v}


def choose_variant(files: dict[str, str], variant: str, cuda: bool) -> str:
    """``auto`` = fp16 on CUDA (else fp32), int8 on CPU (else fp32)."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {VARIANTS}, found {variant!r}")
    if variant != "auto":
        if variant not in files:
            raise FormatError(f"export has no {variant} graph (it has: {', '.join(sorted(files))})")
        return variant
    for v in (("fp16", "fp32") if cuda else ("int8", "fp32")):
        if v in files:
            return v
    raise FormatError(f"export has no usable graph for auto (it has: {', '.join(sorted(files))})")


def query_graph(card: ModelCard, where: Path, variant: str, choice: str) -> tuple[str, str | None]:
    """Which graph encodes queries, read from the card alone (no onnxruntime): ("shallow", the distilled
    query graph's file) or ("full", None: the document graph). ``variant`` is the resolved one."""
    if choice not in QUERY_ENCODERS:
        raise ConfigError(f"query_encoder must be one of {QUERY_ENCODERS}, found {choice!r}")
    files = (card.onnx or {}).get("query_files") or {}
    name = files.get(variant) if isinstance(files, dict) else None
    if choice == "full" or (choice == "auto" and not name):
        return "full", None
    if not name:
        raise FormatError(f"{where}: no shallow {variant} query graph in this export "
                          "(hce-train distill-query, then hce-export onnx)")
    return "shallow", str(name)


def plan(card: ModelCard, where: Path, variant: str = "auto", providers: Sequence[str] | None = None,
         query_encoder: str = "auto") -> dict[str, Any]:
    """The graphs an ``Encoder`` with these arguments would load, from the card alone (no onnxruntime):
    variant, graph, query_encoder, query_graph (file names in the export folder), and query_layers (shallow)."""
    files = _files(card, where)
    chosen = choose_variant(files, variant, cuda=CUDA in (providers or ()))
    kind, qfile = query_graph(card, where, chosen, query_encoder)
    out: dict[str, Any] = {"variant": chosen, "graph": files[chosen], "query_encoder": kind,
                           "query_graph": qfile or files[chosen]}
    if qfile:
        out["query_layers"] = ((card.onnx or {}).get("query_encoder") or {}).get("layers")
    return out


class Encoder:
    """An onnxruntime session plus the export's tokenizer.

    ``providers`` defaults to CPU; ask for ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` on a GPU
    machine. ``providers`` on the instance is what the session really got (onnxruntime silently falls
    back to CPU when the CUDA libraries are missing; this class logs a warning then).
    ``query_max_length`` overrides the card's query truncation (ArguAna's whole-argument queries want 256
    tokens where the card says 64) without touching the export folder.
    ``query_encoder``: queries go through the export's shallow query graph (``hce-train distill-query``,
    card ``onnx.query_files``) when it has one (``auto``), or always through the full document graph
    (``full``), or must use the shallow one (``shallow``: an error when the export has none).
    """

    def __init__(
        self,
        export_dir: str | os.PathLike[str],
        variant: str = "auto",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        session_options: Any = None,
        token_budget: int = TOKEN_BUDGET,
        query_max_length: int | None = None,
        query_encoder: str = "auto",
    ) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as e:
            raise missing_dependency(e.name or "onnxruntime/tokenizers", "serve") from None
        self.export_dir = Path(export_dir)
        if not self.export_dir.is_dir():
            raise FormatError(f"{self.export_dir}: export folder not found")
        self.card = ModelCard.load(self.export_dir)
        self.dim = self.card.dim
        if query_max_length is not None and query_max_length < 1:
            raise ConfigError(f"query_max_length must be >= 1, found {query_max_length}")
        self.query_max_length = query_max_length or self.card.query_max_length
        self.token_budget = max(int(token_budget), 1)
        asked = list(providers) if providers else ["CPUExecutionProvider"]
        self.plan = plan(self.card, self.export_dir, variant, asked, query_encoder)  # the graph files it runs
        self.variant, self.query_encoder, self.query_graph = (self.plan[k]
                                                              for k in ("variant", "query_encoder", "query_graph"))
        graph = self.export_dir / self.plan["graph"]
        if not graph.is_file():
            raise FormatError(f"{graph}: ONNX graph named in hce_model.json is missing")

        so = session_options if session_options is not None else ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"threads must be >= 1, found {threads}")
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        self.session = self._load_session(ort, graph, so, asked)
        self.providers = list(self.session.get_providers())
        if CUDA in asked and CUDA not in self.providers:
            log.warning("CUDA was asked for but onnxruntime runs %s only (CUDA libraries missing?)", self.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.query_session = self._query_session(ort, so, asked) if self.query_encoder == "shallow" else None
        self._int_dtype = np.int64  # exported graphs declare int64 ids

        tok_path = self.export_dir / "tokenizer.json"
        if not tok_path.is_file():
            raise FormatError(f"{tok_path}: tokenizer missing from the export")
        # Two tokenizers, one per truncation length, so encoding never mutates shared state (thread-safe).
        # The bundled tokenizer.json may pad every input to a fixed length: switch that off, we pad ourselves.
        try:
            self._tok_q = Tokenizer.from_file(str(tok_path))
            self._tok_d = Tokenizer.from_file(str(tok_path))
        except Exception as e:  # tokenizers raises a bare Exception for a corrupt or non-UTF-8 file
            raise FormatError(f"{tok_path}: not a readable tokenizer ({' '.join(str(e).split())[:300]})") from None
        self._tok_q.no_padding()
        self._tok_q.enable_truncation(max_length=self.query_max_length)
        self._tok_d.no_padding()
        self._tok_d.enable_truncation(max_length=self.card.max_length)
        # A query cache's key (``qcache``): the text as this tokenizer normalises it, plus what else a query
        # embedding depends on (export folder, variant, query graph, query length).
        self.query_key = query_key_function(self._tok_q)
        self.query_identity = (str(self.export_dir.resolve()), self.variant, self.query_graph, self.query_max_length)

    def _load_session(self, ort: Any, graph: Path, so: Any, asked: list[str]) -> Any:
        try:
            session = ort.InferenceSession(str(graph), sess_options=so, providers=asked,
                                           disabled_optimizers=disabled_optimizers(asked))
        except Exception as e:  # onnxruntime raises its own untyped errors for a corrupt graph
            raise FormatError(f"{graph}: onnxruntime cannot load it ({' '.join(str(e).split())[:300]})") from None
        names = [i.name for i in session.get_inputs()]
        unknown = set(names) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown or "input_ids" not in names:
            raise FormatError(f"{graph}: unexpected graph inputs {names}")
        outputs = [o.name for o in session.get_outputs()]
        if OUTPUT_NAME not in outputs:
            raise FormatError(f"{graph}: no {OUTPUT_NAME!r} output (found {outputs})")
        out_dim = session.get_outputs()[outputs.index(OUTPUT_NAME)].shape[-1]
        if isinstance(out_dim, int) and out_dim != self.dim:
            raise FormatError(f"{graph}: graph returns {out_dim}-d embeddings but hce_model.json says dim {self.dim}")
        return session

    def _query_session(self, ort: Any, so: Any, asked: list[str]) -> Any:
        graph = self.export_dir / self.query_graph
        if not graph.is_file():
            raise FormatError(f"{graph}: ONNX graph named in hce_model.json is missing")
        session = self._load_session(ort, graph, so, asked)
        if [i.name for i in session.get_inputs()] != self.input_names:
            raise FormatError(f"{graph}: the query graph's inputs differ from the document graph's")
        return session

    # ------------------------------------------------------------------ public API
    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries (truncated at ``query_max_length``) with the query graph: float32 (n, dim), unit rows."""
        texts = _check_texts(texts)
        session = self.query_session or self.session
        if len(texts) == 1:
            return self._encode_one(self._tok_q, texts[0], session)
        return self._encode(self._tok_q, texts, progress=False, session=session)

    def encode_documents(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed documents (truncated at ``card.max_length``): float32 (n, dim), unit rows.

        Callers pass ``Document.full_text`` (title + " " + text).
        """
        return self._encode(self._tok_d, _check_texts(texts), progress=progress)

    def encode(self, texts: str | Sequence[str], query: bool = False, progress: bool = False) -> np.ndarray:
        """sentence-transformers' ``encode``: one text -> (dim,), a list -> (n, dim); float32, unit rows.

        Documents by default (pass ``Document.full_text``, title + " " + text); ``query=True`` embeds queries
        (their own truncation length, and the shallow query graph where the export has one).
        """
        if isinstance(texts, str):
            return self.encode([texts], query=query)[0]
        return self.encode_queries(texts) if query else self.encode_documents(texts, progress=progress)

    def __repr__(self) -> str:
        return (f"Encoder({str(self.export_dir)!r}, variant={self.variant!r}, query_encoder={self.query_encoder!r}, "
                f"providers={self.providers})")

    # ------------------------------------------------------------------ internals
    def _feed(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        feed = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feed["attention_mask"] = mask
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(ids)  # single-segment inputs
        return feed

    def _run(self, ids: np.ndarray, mask: np.ndarray, session: Any = None) -> np.ndarray:
        try:
            (emb,) = (session or self.session).run([OUTPUT_NAME], self._feed(ids, mask))  # (b, dim)
        except MemoryError:
            raise
        except Exception as e:  # onnxruntime's untyped errors: a graph that loads but cannot run (corrupt)
            raise FormatError(f"{self.export_dir}: onnxruntime failed to run the graph "
                              f"({' '.join(str(e).split())[:300]})") from None
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:  # a graph with a dynamic output dim that lies
            raise FormatError(f"{self.export_dir}: graph returned shape {emb.shape}, hce_model.json says dim "
                              f"{self.dim}")
        # Re-normalise: the graph does, but int8/fp16 rounding leaves norms a hair off 1.
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)

    def _encode_one(self, tok: Any, text: str, session: Any = None) -> np.ndarray:
        # Latency path for one query: no sorting, batching or padding work.
        ids = np.asarray([tok.encode(text).ids], dtype=self._int_dtype)  # (1, L)
        return self._run(ids, np.ones_like(ids), session)

    def _encode(self, tok: Any, texts: list[str], progress: bool, session: Any = None) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encs = tok.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        order = np.argsort(-lengths, kind="stable")  # longest first: the first batch shows a memory problem early
        bar = progress_bar(len(texts), progress, "encode")
        start = 0
        while start < len(order):
            width = int(lengths[order[start]])  # the batch's longest (sorted descending)
            size = max(1, min(MAX_BATCH, self.token_budget // max(width, 1), len(order) - start))
            floor = width - max(PAD_SLACK, width // 8)
            size = max(1, int(np.count_nonzero(lengths[order[start : start + size]] >= floor)))  # sorted: a prefix
            rows = order[start : start + size]
            ids = np.zeros((size, width), dtype=self._int_dtype)  # (b, L), pad id 0 is masked out
            mask = np.zeros((size, width), dtype=self._int_dtype)  # (b, L)
            for r, i in enumerate(rows):
                seq = encs[i].ids
                ids[r, : len(seq)] = seq
                mask[r, : len(seq)] = 1
            out[rows] = self._run(ids, mask, session)
            start += size
            bar.update(size)
        bar.close()
        return out


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ConfigError("encode_* takes a list of texts, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ConfigError(f"text {i} is {type(t).__name__}, expected str")
    return out

