"""``Engine``: the one entry point to an index (a folder, or a Milvus collection), for CLI, HTTP and Python.

```python
from hce_serve import Engine

with Engine.open("idx") as engine:
    for hit in engine.search("what causes ocean warming", k=5, filter={"lang": "en"}):
        print(hit.score, hit.id, hit.title)
```

Text goes in, ``Hit`` objects (id, score and the stored title, text and metadata) come out. The encoder
is opened on first use, so deleting, compacting, reading stats or fetching documents never loads
onnxruntime. Writes are durable when the call returns. Thread-safe: many searches at once, one write at a time.

The Engine owns text: the encoder, the query cache, the corpus tree, and how queries are encoded and
searched (``EngineOptions``). Its backend (``backend.Backend``) owns vectors, stored documents, filters and
writes: an index folder (``Engine.open``: ``folder.store.IndexStore``) or a Milvus collection written by
``hce-serve index export-milvus`` (``Engine.open_milvus``: ``milvus.store.MilvusStore``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import defaults, facets, searches
from .batching import chunks, progress_bar
from .checks import check_ef, check_fields, check_filter, check_k, check_query
from .documents import AddResult, DeleteResult, Document, Hit
from .errors import DataError, FormatError, HCEError
from .folder.build import build_index, report_left_out, scan_corpus
from .folder.store import IndexStore
from .formats.beir import iter_corpus
from .formats.card import ModelCard
from .formats.tree import Subtree, load_tree
from .lexical import modes
from .options import EngineOptions
from .qcache import QueryCache
from .searches import SearchRequest

if TYPE_CHECKING:
    from .backend import Backend, Batch

log = logging.getLogger(__name__)


class Engine:
    """Search and update an index (a folder, or a Milvus collection) by text."""

    def __init__(self, store: Backend, card: ModelCard, options: EngineOptions | None = None,
                 query_cache: QueryCache | None = None) -> None:
        self.store, self.card = store, card
        self.options = options or EngineOptions()
        # A QueryCache may be shared between engines: keys carry the encoder's identity (full != shallow).
        self.query_cache = query_cache if query_cache is not None else QueryCache(self.options.query_cache)
        self._encoder: Any = None
        self._tree: Any = None
        self._lazy_lock = threading.Lock()

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], writable: bool = False, *, checksums: bool = True,
             save_every: int | None = defaults.SAVE_EVERY, options: EngineOptions | None = None,
             **knobs: Any) -> Engine:
        """Open an index folder (read-only unless ``writable``; one writer per folder at a time).

        ``options``, or any of its fields by name (``variant``, ``threads``, ``search_threads``,
        ``query_encoder``, ``query_cache``, ``providers``): a ``query_encoder`` the export cannot serve fails
        here; ``query_cache`` may also be a ``QueryCache`` to share. Use it as a context manager: leaving the
        block of a writable engine folds its log into a snapshot.
        """
        options, cache = _options(options, knobs)
        store = IndexStore.open(index_dir, writable=writable, checksums=checksums, save_every=save_every)
        return cls._attach(store, str(index_dir), options, cache)

    @classmethod
    def open_milvus(cls, uri: str, collection: str, model: str | os.PathLike[str], token: str | None = None,
                    writable: bool = False, *, options: EngineOptions | None = None, **knobs: Any) -> Engine:
        """Open a Milvus collection written by ``hce-serve index export-milvus``: ``uri`` a milvus-lite file
        (``./x.db``) or a server (``http://host:19530``, ``token`` if it needs one); ``model`` the export the
        index was built with (or its ``IDX_DIR/encoder``). Same search, add, delete and get as a folder."""
        from .milvus.layout import MilvusTarget
        from .milvus.store import MilvusStore

        options, cache = _options(options, knobs)
        store = MilvusStore.open(MilvusTarget(str(uri), collection, token), model, writable=writable)
        return cls._attach(store, f"{uri} {collection}", options, cache)

    @classmethod
    def _attach(cls, store: Backend, where: str, options: EngineOptions, cache: QueryCache | None) -> Engine:
        try:
            card = ModelCard.load(store.encoder_dir)
            if card.dim != store.dim:
                raise FormatError(f"{where}: index dimension {store.dim} differs from its encoder's "
                                  f"{card.dim} ({store.encoder_dir})")
            engine = cls(store, card, options, cache)
            if options.query_encoder != defaults.QUERY_ENCODER:
                engine.query_plan()  # a choice the export cannot serve fails now, not at the first query
        except BaseException:
            store.close()
            raise
        return engine

    @staticmethod
    def build(export_dir: str | os.PathLike[str], corpus: str | os.PathLike[str], index_dir: str | os.PathLike[str],
              params: Any = None, **options: Any) -> dict[str, Any]:
        """Encode a corpus file into a new index folder (options: ``build.build_index``); returns its stats."""
        return build_index(export_dir, corpus, index_dir, params, **options)

    @property
    def writable(self) -> bool:
        return self.store.writable

    @property
    def stores_documents(self) -> bool:
        return self.store.stores_documents

    @property
    def encoder(self) -> Any:
        """The ONNX encoder of the folder's ``encoder/`` copy, loaded on first use."""
        if self._encoder is None:
            with self._lazy_lock:
                if self._encoder is None:
                    from .encoder import Encoder

                    enc = Encoder(self.store.encoder_dir, **self.options.encoder_args)
                    if enc.dim != self.store.dim:
                        raise FormatError(f"{self.store.encoder_dir}: encoder dim {enc.dim} differs from the "
                                          f"index's {self.store.dim}")
                    self._encoder = enc
        return self._encoder

    @property
    def tree(self) -> Any:
        """The corpus tree of the folder's ``encoder/`` copy (``tree.Tree``), or None; loaded on first use."""
        if self._tree is None:
            with self._lazy_lock:
                if self._tree is None:
                    self._tree = load_tree(self.store.encoder_dir, self.card.dim) or False
        return self._tree or None

    # ---- reads ------------------------------------------------------------------------------------
    def search(self, query: str, k: int = defaults.K, filter: Mapping[str, Any] | None = None,
               ef: int | None = None, subtree: int | None = None, fields: Iterable[str] | None = None,
               max_k: int | None = None, *, mode: str | None = None, fusion: str | None = None,
               alpha: float | None = None, depth: int | None = None, explain: bool = False) -> list[Hit]:
        """The ``k`` best documents for ``query``, best first.

        ``filter``: ``{"field": value}`` keeps documents whose metadata field equals value (a list: any of
        them; several fields: all must match), applied inside the index search. ``ef``: search breadth for this
        query (HNSW beam, or IVF cells scanned). ``subtree``: only documents under that node of the corpus tree.
        ``fields``: stored fields to return (default: title, text, metadata). ``max_k``: the largest ``k``
        accepted (default ``EngineOptions.K``; a server's own limit).

        ``mode``: dense | lexical | hybrid (default: the index's, ``search_defaults``); hybrid fuses each side's
        top ``depth`` by ``fusion`` (rrf | minmax | dbsf) with ``alpha`` the dense weight. ``explain``: each hit
        carries each side's rank and score. Filters, ``subtree`` and deletions apply to both sides.
        """
        return self.search_batch([query], k, filter, ef, subtree, fields, max_k, mode=mode, fusion=fusion,
                                 alpha=alpha, depth=depth, explain=explain)[0]

    def search_batch(self, queries: Sequence[str], k: int = defaults.K, filter: Mapping[str, Any] | None = None,
                     ef: int | None = None, subtree: int | None = None, fields: Iterable[str] | None = None,
                     max_k: int | None = None, num_threads: int | None = None, progress: bool = False, *,
                     mode: str | None = None, fusion: str | None = None, alpha: float | None = None,
                     depth: int | None = None, explain: bool = False) -> list[list[Hit]]:
        """``search`` for many queries (encoded in batches; ``num_threads`` index threads, -1: all cores;
        default ``EngineOptions.index_threads``)."""
        req = self.prepare_search(queries, k, filter, ef, subtree, fields, max_k, mode=mode, fusion=fusion,
                                  alpha=alpha, depth=depth, explain=explain)
        out: list[list[Hit]] = []
        with progress_bar(len(req.texts), progress, "search", unit="query") as bar:
            for part in chunks(req.texts, defaults.SEARCH_CHUNK):
                (rows,) = self.run_searches([req.with_texts(part)], num_threads, errors="raise")
                out.extend([[Hit.of(d, s, doc, req.fields, ex) for d, s, doc, ex in row] for row in rows])
                bar.update(len(part))
        return out

    def prepare_search(self, queries: Sequence[str], k: int = defaults.K, filter: Mapping[str, Any] | None = None,
                       ef: int | None = None, subtree: int | None = None, fields: Iterable[str] | None = None,
                       max_k: int | None = None, *, mode: str | None = None, fusion: str | None = None,
                       alpha: float | None = None, depth: int | None = None, explain: bool = False) -> SearchRequest:
        """One search, checked (``DataError`` for a bad value) and resolved against the index's defaults, not run:
        ``run_searches`` runs many of them with one encoder call (the HTTP server's micro-batching)."""
        if isinstance(queries, str):
            raise DataError("search_batch takes a list of queries; use search() for one")
        k, ef, fields, flt = check_k(k, max_k), check_ef(ef), check_fields(fields), check_filter(filter)
        settings = modes.resolve(self.search_defaults, mode, fusion, alpha, depth, explain)
        texts = tuple(check_query(q) for q in queries)
        scope = self._subtree(subtree) if subtree is not None else None
        return SearchRequest(texts, k, settings, ef, flt, scope, fields)

    def run_searches(self, requests: Sequence[SearchRequest], num_threads: int | None = None,
                     errors: str = "return") -> list[list[modes.Row] | Exception]:
        """Run prepared searches; the queries of every request that needs the encoder (dense and hybrid) go
        through it in one call, and the rest of each search (k, filter, ef, subtree, mode, fields) is its own.

        Per request: its rows (one per query, each ``(id, score, stored document or None, explain or None)``),
        or with ``errors="return"`` the exception that request raised, so one bad request in a batch fails
        alone (an encoder failure fails every request that needed it); ``errors="raise"`` raises it.
        """
        threads = self.options.index_threads if num_threads is None else num_threads
        return searches.run(self.store, self.query_vectors, requests, threads, errors)

    @property
    def search_defaults(self) -> modes.SearchSettings:
        """The index's default mode, fusion, alpha and depth (``index build`` stores them)."""
        return self.store.search_defaults

    def query_vectors(self, texts: Sequence[str]) -> Any:
        """Embeddings of checked query texts, float32 (n, dim), through the query cache."""
        return self.query_cache.encode(self.encoder, texts)

    def query_plan(self) -> dict[str, Any]:
        """The graphs documents and queries go through (``encoder.plan``; before the encoder loads: its card)."""
        if self._encoder is not None:
            return dict(self._encoder.plan)
        from .encoder import plan

        o = self.options
        return plan(self.card, self.store.encoder_dir, o.variant, o.providers, o.query_encoder)

    def _subtree(self, node: object) -> Subtree:
        if self.tree is None:
            raise DataError("this index has no corpus tree (its export carried none): subtree search needs one")
        return self.tree.subtree(node)

    def get(self, doc_id: str) -> Document | None:
        """The stored document with this id, or None when the index does not hold it."""
        if not isinstance(doc_id, str):
            raise DataError(f"document id must be a string, found {type(doc_id).__name__}")
        if not self.store.stores_documents:
            raise DataError("this index stores no documents (built with --no-store); it can return ids only")
        return self.store.get([doc_id]).get(doc_id)

    def __len__(self) -> int:
        """Live documents."""
        return len(self.store)

    def __bool__(self) -> bool:
        return True  # an engine on an empty index is still an open engine

    def ids(self) -> list[str]:
        """Every live document id."""
        return self.store.ids()

    def field_values(self, keys: int = facets.KEYS, values: int = facets.VALUES) -> dict[str, Any]:
        """The metadata keys a filter can use with some of their values and counts, bounded (``facets.py``)."""
        for name, v, hi in (("keys", keys, facets.MAX_KEYS), ("values", values, facets.MAX_VALUES)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise DataError(f"{name} must be an integer between 1 and {hi}, found {v!r}")
        return self.store.field_values(keys, values)

    def stats(self) -> dict[str, Any]:
        """Counts, parameters and the encoder in use; no filesystem paths (HTTP clients see this)."""
        enc: dict[str, Any] = {"base_model": self.card.public_name, "dim": self.card.dim,
                               "loaded": self._encoder is not None}
        try:
            enc.update(self.query_plan())  # graph file names only
        except HCEError:  # an export this engine cannot search with (its message names a path); reads still work
            enc["query_encoder"] = None
        if self._encoder is not None:
            enc["providers"] = list(self._encoder.providers)
        return {**self.store.stats(), "tree": self.card.tree, "encoder": enc, "query_cache": self.query_cache.stats()}

    # ---- writes -----------------------------------------------------------------------------------
    def add(self, docs: Iterable[Document | Mapping[str, Any]] | Document | Mapping[str, Any]) -> AddResult:
        """Add documents (``Document`` or ``{"_id", "title", "text", "metadata"}``); an id already in the index
        is replaced. Checked in full before anything is encoded; durable when this returns."""
        batch = self.store.prepare([docs] if isinstance(docs, (Document, Mapping)) else docs)
        return self._encode_and_add(batch) if batch.docs else AddResult(0, 0)

    def _encode_and_add(self, batch: Batch) -> AddResult:
        vecs = self.encoder.encode_documents([d.full_text for d in batch.docs])  # (n, dim)
        return self.store.add(batch, vecs, self.tree.assign(vecs) if self.tree is not None else None)

    def add_corpus(self, corpus: str | os.PathLike[str], batch_size: int = defaults.BATCH_SIZE,
                   progress: bool = False, skip_empty: bool = False) -> AddResult:
        """Stream a corpus file into the index (the whole file is checked before the first document is added)."""
        self.store.prepare([])  # writable? before reading the file
        scan = scan_corpus(corpus)
        added = replaced = empty = dropped = 0
        with progress_bar(scan.kept(skip_empty), progress, "index add") as bar:
            for raw in chunks(iter_corpus(corpus, empty="skip" if skip_empty else "keep"), batch_size):
                batch = self.store.prepare(raw, strict=False)
                res = self._encode_and_add(batch)
                added, replaced, empty = added + res.added, replaced + res.replaced, empty + res.empty
                dropped += batch.dropped_metadata
                bar.update(len(raw))
        report_left_out(corpus, scan, skip_empty, dropped)
        return AddResult(added, replaced, empty)

    def delete(self, ids: Iterable[str] | str) -> DeleteResult:
        """Delete documents by id; ids not in the index come back in ``missing``. Durable when this returns."""
        return self.store.delete([ids] if isinstance(ids, str) else list(ids))

    def build_lexical(self, analyzer: Any = None) -> dict[str, Any]:
        """Add the lexical (BM25) part to a folder built without one (before hybrid search, or --no-lexical)."""
        if not isinstance(self.store, IndexStore):
            raise DataError("a Milvus collection gets its lexical part from its index folder: build-lexical the "
                            "folder, then "
                            "export-milvus it again with --overwrite")
        return self.store.build_lexical(analyzer)

    def save(self, force: bool = False) -> bool:
        return self.store.save(force=force)

    def compact(self) -> int:
        return self.store.compact()

    def close(self, save: bool | None = None) -> None:
        """Release the folder; a writable engine first folds its log into a snapshot (unless ``save=False``)."""
        self.store.close(save=self.store.writable if save is None else save)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _options(options: EngineOptions | None, knobs: dict[str, Any]) -> tuple[EngineOptions, QueryCache | None]:
    """``options`` with the fields named in ``knobs``; a ``query_cache`` given as a ``QueryCache`` is shared."""
    cache = knobs.get("query_cache")
    if isinstance(cache, QueryCache):
        knobs = {**knobs, "query_cache": cache.capacity}
    return (options or EngineOptions()).replace(**knobs), cache if isinstance(cache, QueryCache) else None
