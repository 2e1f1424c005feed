"""``Engine``: the one entry point to an index (a folder, or a Milvus collection), for CLI, HTTP and Python.

```python
from hce_serve import Engine

with Engine.open("idx") as engine:
    for hit in engine.search("what causes ocean warming", k=5, filter={"lang": "en"}):
        print(hit.score, hit.id, hit.title)
```

Text goes in, ``Hit`` objects (id, score and the stored title, text and metadata) come out. The encoder
is opened on first use, so deleting, compacting, reading stats or fetching documents never loads
onnxruntime. Writes go through the store (``store.py``), which checks, logs, applies and saves them; they
are durable when the call returns. Thread-safe: many searches at once, one write at a time.

Two backends, one Engine: ``Engine.open(IDX_DIR)`` (``IndexStore``: hnswlib + SQLite in a folder) and
``Engine.open_milvus(URI, COLLECTION, EXPORT_DIR)`` (``MilvusStore``: a collection written by
``hce-serve index export-milvus``, on milvus-lite or a Milvus server). The Engine owns the encoder, the query
cache and the corpus tree; the backend owns vectors, stored documents, filters and writes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import defaults
from .batching import chunks, progress_bar
from .checks import check_ef, check_fields, check_filter, check_k, check_query
from .documents import AddResult, DeleteResult, Document, Hit
from .errors import DataError, FormatError, HCEError
from .folder.build import build_index, report_empty, scan_corpus
from .folder.store import IndexStore
from .formats.beir import iter_corpus
from .formats.card import ModelCard
from .formats.tree import Subtree, load_tree
from .index.index import Index
from .lexical import modes
from .qcache import QueryCache

if TYPE_CHECKING:
    from .milvus.store import MilvusStore

log = logging.getLogger(__name__)


def _public_name(name: str) -> str:
    """A model name for clients: a local folder becomes its last component (no filesystem path leaks);
    a hub name (``org/model``) stays as it is."""
    return Path(name).name if Path(name).is_absolute() or name.startswith((".", "~")) else name


class Engine:
    """Search and update an index (a folder, or a Milvus collection) by text."""

    def __init__(self, store: IndexStore | MilvusStore, card: ModelCard, variant: str = defaults.VARIANT,
                 threads: int | None = None, providers: Sequence[str] | None = None, *,
                 query_encoder: str = defaults.QUERY_ENCODER, query_cache: int | QueryCache = defaults.QUERY_CACHE) -> None:
        self.store, self.card = store, card
        self._encoder_args = {"variant": variant, "threads": threads, "providers": providers, "query_encoder": query_encoder}
        # A QueryCache may be shared between engines: keys carry the encoder's identity (full != shallow).
        self.query_cache = query_cache if isinstance(query_cache, QueryCache) else QueryCache(query_cache)
        self._encoder: Any = None
        self._tree: Any = None
        self._lazy_lock = threading.Lock()

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], writable: bool = False, variant: str = defaults.VARIANT,
             threads: int | None = None, providers: Sequence[str] | None = None, checksums: bool = True,
             save_every: int | None = defaults.SAVE_EVERY, query_encoder: str = defaults.QUERY_ENCODER,
             query_cache: int | QueryCache = defaults.QUERY_CACHE) -> Engine:
        """Open an index folder (read-only unless ``writable``; one writer per folder at a time).

        ``query_encoder`` auto | full | shallow: a choice the export cannot serve fails here. ``query_cache``:
        entries (0 = off), or a ``QueryCache`` to share. Use it as a context manager: leaving the block of a
        writable engine folds its log into a snapshot.
        """
        store = IndexStore.open(index_dir, writable=writable, checksums=checksums, save_every=save_every)
        return cls._attach(store, str(index_dir), variant, threads, providers, query_encoder, query_cache)

    @classmethod
    def open_milvus(cls, uri: str, collection: str, model: str | os.PathLike[str], token: str | None = None,
                    writable: bool = False, variant: str = defaults.VARIANT, threads: int | None = None,
                    providers: Sequence[str] | None = None, query_encoder: str = defaults.QUERY_ENCODER,
                    query_cache: int | QueryCache = defaults.QUERY_CACHE) -> Engine:
        """Open a Milvus collection written by ``hce-serve index export-milvus``: ``uri`` a milvus-lite file
        (``./x.db``) or a server (``http://host:19530``, ``token`` if it needs one); ``model`` the export the
        index was built with (or its ``IDX_DIR/encoder``). Same search, add, delete and get as a folder."""
        from .milvus.layout import MilvusTarget
        from .milvus.store import MilvusStore

        store = MilvusStore.open(MilvusTarget(str(uri), collection, token), model, writable=writable)
        return cls._attach(store, f"{uri} {collection}", variant, threads, providers, query_encoder, query_cache)

    @classmethod
    def _attach(cls, store: IndexStore | MilvusStore, where: str, variant: str, threads: int | None,
                providers: Sequence[str] | None, query_encoder: str, query_cache: int | QueryCache) -> Engine:
        try:
            card = ModelCard.load(store.encoder_dir)
            if card.dim != store.manifest.dim:
                raise FormatError(f"{where}: index dimension {store.manifest.dim} differs from its encoder's "
                                  f"{card.dim} ({store.encoder_dir})")
            engine = cls(store, card, variant, threads, providers, query_encoder=query_encoder, query_cache=query_cache)
            if query_encoder != defaults.QUERY_ENCODER:
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
    def index(self) -> Index | Any:
        """The backend's vector index: hnswlib's ``Index``, or a ``milvus_client.MilvusCollection``."""
        return self.store.index

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

                    enc = Encoder(self.store.encoder_dir, **self._encoder_args)
                    if enc.dim != self.store.manifest.dim:
                        raise FormatError(f"{self.store.encoder_dir}: encoder dim {enc.dim} differs from the "
                                          f"index's {self.store.manifest.dim}")
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
               max_k: int = defaults.MAX_K, *, mode: str | None = None, fusion: str | None = None,
               alpha: float | None = None, depth: int | None = None, explain: bool = False) -> list[Hit]:
        """The ``k`` best documents for ``query``, best first.

        ``filter``: ``{"field": value}`` keeps documents whose metadata field equals value (a list: any of
        them; several fields: all must match), applied inside the index search. ``ef``: search breadth for this
        query (HNSW beam, or IVF cells scanned). ``subtree``: only documents under that node of the corpus tree.
        ``fields``: stored fields to return (default: title, text, metadata).

        ``mode``: dense | lexical | hybrid (default: the index's, ``search_defaults``); hybrid fuses each side's
        top ``depth`` by ``fusion`` (rrf | minmax | dbsf) with ``alpha`` the dense weight. ``explain``: each hit
        carries each side's rank and score. Filters, ``subtree`` and deletions apply to both sides.
        """
        # the request's threads (``threads``, default 1) serve its index search too: an ivf-sq8 index splits the
        # query's cells between them
        threads = self._encoder_args["threads"] or 1
        return self.search_batch([query], k, filter, ef, subtree, fields, max_k, num_threads=threads, mode=mode,
                                 fusion=fusion, alpha=alpha, depth=depth, explain=explain)[0]

    def search_batch(self, queries: Sequence[str], k: int = defaults.K, filter: Mapping[str, Any] | None = None,
                     ef: int | None = None, subtree: int | None = None, fields: Iterable[str] | None = None,
                     max_k: int = defaults.MAX_K, num_threads: int = 1, progress: bool = False, *,
                     mode: str | None = None, fusion: str | None = None, alpha: float | None = None,
                     depth: int | None = None, explain: bool = False) -> list[list[Hit]]:
        """``search`` for many queries (encoded in batches; ``num_threads`` graph threads, -1: all cores)."""
        if isinstance(queries, str):
            raise DataError("search_batch takes a list of queries; use search() for one")
        k, ef, fields, flt = check_k(k, max_k), check_ef(ef), check_fields(fields), check_filter(filter)
        settings = modes.resolve(self.search_defaults, mode, fusion, alpha, depth, explain)
        texts = [check_query(q) for q in queries]
        scope = self._subtree(subtree) if subtree is not None else None
        out: list[list[Hit]] = []
        bar = progress_bar(len(texts), progress, "search", unit="query")
        for part in chunks(texts, defaults.SEARCH_CHUNK):
            rows = modes.run(self.store, self.query_vectors, part, k, settings, ef, flt, scope, fields, num_threads)
            out.extend([[Hit(d, s, *self._fields(doc, fields), explain=ex) for d, s, doc, ex in row] for row in rows])
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        return out

    @property
    def search_defaults(self) -> modes.SearchSettings:
        """The index's default mode, fusion, alpha and depth (``index build`` stores them; a folder without a
        lexical part searches dense)."""
        return modes.stored_defaults(self.store.manifest.extra, getattr(self.store, "lexical", None) is not None)

    def query_vectors(self, texts: Sequence[str]) -> Any:
        """Embeddings of checked query texts, float32 (n, dim), through the query cache."""
        return self.query_cache.encode(self.encoder, texts)

    def query_plan(self) -> dict[str, Any]:
        """The graphs documents and queries go through (``encoder.plan``; before the encoder loads: its card)."""
        if self._encoder is not None:
            return dict(self._encoder.plan)
        from .encoder import plan

        a = self._encoder_args
        return plan(self.card, self.store.encoder_dir, a["variant"], a["providers"], a["query_encoder"])

    def _subtree(self, node: object) -> Subtree:
        tree = self.tree
        if tree is None:
            raise DataError("this index has no corpus tree (its export carried none): subtree search needs one")
        n = tree.parent.shape[0]
        if not isinstance(node, int) or isinstance(node, bool) or not 0 <= node < n:
            raise DataError(f"subtree must be a node id between 0 and {n - 1:,}, found {node!r}")
        return tree.subtree(node)

    @staticmethod
    def _fields(doc: Document | None, fields: tuple[str, ...]) -> tuple[Any, Any, Any]:
        if doc is None:  # ids only: no fields asked for, or an index without stored documents
            return None, None, None
        return (doc.title if "title" in fields else None, doc.text if "text" in fields else None,
                (doc.metadata or {}) if "metadata" in fields else None)

    def get(self, doc_id: str) -> Document | None:
        """The stored document with this id, or None when the index does not hold it."""
        if not isinstance(doc_id, str):
            raise DataError(f"document id must be a string, found {type(doc_id).__name__}")
        if not self.store.stores_documents:
            raise DataError("this index stores no documents (built with --no-store); it can return ids only")
        if doc_id not in self.index:
            return None
        return self.store.documents([doc_id]).get(doc_id)

    def stats(self) -> dict[str, Any]:
        """Counts, parameters and the encoder in use; no filesystem paths (HTTP clients see this)."""
        enc: dict[str, Any] = {"base_model": _public_name(self.card.base_model), "dim": self.card.dim,
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
        if isinstance(docs, (Document, Mapping)):
            docs = [docs]
        batch = self.store.prepare(docs)
        if not batch.docs:
            return AddResult(0, 0)
        vecs = self.encoder.encode_documents([d.full_text for d in batch.docs])  # (n, dim)
        leaves = self.tree.assign(vecs) if self.tree is not None else None
        return self.store.add_batch(batch, vecs, leaves)

    def add_corpus(self, corpus: str | os.PathLike[str], batch_size: int = defaults.BATCH_SIZE,
                   progress: bool = False, skip_empty: bool = False) -> AddResult:
        """Stream a corpus file into the index (the whole file is checked before the first document is added)."""
        self.store.prepare([])  # writable? before reading the file
        scan = scan_corpus(corpus)
        added = replaced = empty = dropped = 0
        bar = progress_bar(scan.kept(skip_empty), progress, "index add")
        for raw in chunks(iter_corpus(corpus, empty="skip" if skip_empty else "keep"), batch_size):
            batch = self.store.prepare(raw, strict=False)
            vecs = self.encoder.encode_documents([d.full_text for d in batch.docs])  # (n, dim)
            res = self.store.add_batch(batch, vecs, self.tree.assign(vecs) if self.tree is not None else None)
            added, replaced, empty = added + res.added, replaced + res.replaced, empty + res.empty
            dropped += batch.dropped_metadata
            if bar is not None:
                bar.update(len(raw))
        if bar is not None:
            bar.close()
        report_empty(corpus, scan, skip_empty)
        if dropped:
            log.warning("%s: left out %d metadata entries that are not flat (nested values, bad keys)", corpus, dropped)
        return AddResult(added, replaced, empty)

    def delete(self, ids: Iterable[str] | str) -> DeleteResult:
        """Delete documents by id; ids not in the index come back in ``missing``. Durable when this returns."""
        return self.store.delete([ids] if isinstance(ids, str) else list(ids))

    def build_lexical(self, analyzer: Any = None) -> dict[str, Any]:
        """Add the lexical (BM25) part to a folder built without one (before hybrid search, or --no-lexical)."""
        build = getattr(self.store, "build_lexical", None)
        if build is None:
            raise DataError("this backend has no lexical part to build (a Milvus collection searches dense only)")
        return build(analyzer)

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
