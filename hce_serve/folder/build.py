"""Corpus file -> a new index folder: stream documents through the encoder into the graph and SQLite.

The whole corpus file is read once first (ids, UTF-8, JSON, empty documents counted) so a bad line fails
before minutes of encoding, then again in chunks of ``batch_size`` documents: memory is bounded for any
corpus size. Everything is built beside IDX_DIR and renamed into place at the end (``snapshot.create_folder``),
so a killed build leaves no half index behind.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..batching import chunks, progress_bar
from ..checks import check_documents
from ..documents import Document
from ..errors import ConfigError
from ..formats.beir import iter_corpus
from ..formats.tree import NO_LEAF, Tree, load_tree
from ..index.index import Index
from ..options import IndexParams
from .docstore import DocStore
from .snapshot import build_path, check_can_create, create_folder, remove_build_leftovers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusScan:
    total: int  # documents in the file
    empty: int  # of them with blank title and text

    def kept(self, skip_empty: bool) -> int:
        return self.total - self.empty if skip_empty else self.total


def scan_corpus(path: str | os.PathLike[str]) -> CorpusScan:
    """Read a corpus file once, validating every line; count its documents and the empty ones."""
    total = empty = 0
    for doc in iter_corpus(path, empty="keep"):
        total += 1
        empty += doc.is_empty
    return CorpusScan(total, empty)


def report_left_out(path: str | os.PathLike[str], scan: CorpusScan, skip_empty: bool, dropped_metadata: int) -> None:
    """Warn about what a corpus file gave that was not indexed as written: empty documents, nested metadata."""
    if scan.empty and skip_empty:
        log.warning("%s: left out %d documents with empty title and text (--skip-empty)", path, scan.empty)
    elif scan.empty:
        log.warning("%s: %d documents have empty title and text; indexed as they are, as BEIR's evaluation does "
                    "(--skip-empty leaves them out)", path, scan.empty)
    if dropped_metadata:
        log.warning("%s: left out %d metadata entries that are not flat (nested values, bad keys)", path,
                    dropped_metadata)


def build_index(
    export_dir: str | os.PathLike[str],
    corpus: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    params: IndexParams | None = None,
    overwrite: bool = False,
    variant: str = defaults.VARIANT,
    threads: int | None = None,
    batch_size: int = defaults.BATCH_SIZE,
    progress: bool = False,
    store_documents: bool = True,
    skip_empty: bool = False,
    ray: Any = None,
    lexical: bool = True,
    lexical_language: str = defaults.LEXICAL_LANGUAGE,
    lexical_stopwords: Any = defaults.LEXICAL_STOPWORDS,
    search: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Encode a corpus file into a new index folder; returns its stats plus the empty-document counts.

    ``ray``: a ``ray_encode.RayOptions`` to encode the chunks on Ray actors instead of in this process
    (the same chunks, so the same vectors); the index is built here either way. ``lexical``: also build the
    BM25 part (hybrid search) with a Snowball ``lexical_language`` stemmer and ``lexical_stopwords``; it
    needs the stored documents. ``search``: the index's default mode / fusion / alpha / depth (checked).
    """
    from ..encoder import Encoder
    from ..lexical import Analyzer
    from ..lexical.bm25 import LexicalIndex
    from ..lexical.modes import SEARCH_KEY, resolve, stored_defaults
    from ..lexical.segment import SegmentBuilder

    export_dir, index_dir = Path(export_dir), Path(index_dir)
    check_can_create(index_dir, overwrite)  # before minutes of encoding, not after
    if ray is not None:
        from .ray_encode import ray_module

        ray_module()  # installed? before the corpus is read
    lexical = lexical and store_documents  # BM25 needs the text: an ids-only index (--no-store) is dense-only
    analyzer = Analyzer.create(lexical_language, lexical_stopwords) if lexical else None
    settings = resolve(stored_defaults({}, lexical), **dict(search or {}))
    if settings.mode != "dense" and not lexical:
        raise ConfigError(f"search mode {settings.mode!r} needs the lexical part (drop --no-lexical / --no-store)")
    scan = scan_corpus(corpus)
    encoder = Encoder(export_dir, variant=variant, threads=threads)
    tree = load_tree(export_dir, encoder.dim)
    known = dict(zip(tree.doc_ids, tree.doc_leaf.tolist(), strict=True)) if tree is not None else {}
    index = Index(encoder.dim, params or IndexParams(), capacity=scan.kept(skip_empty))
    remove_build_leftovers(index_dir)
    docs_path = build_path(index_dir, "docs") if store_documents else None
    docs = DocStore.create(docs_path, bulk=True) if docs_path is not None else None
    lex = SegmentBuilder(analyzer) if analyzer is not None else None
    t0, dropped = time.perf_counter(), [0]
    bar = progress_bar(scan.kept(skip_empty), progress, "index build")
    try:
        with index.bulk_load():  # an ivf-sq8 index learns its cells once, from the whole corpus
            for batch, vecs in _encoded(encoder, export_dir, _checked(corpus, batch_size, skip_empty, dropped), ray):
                leaves = _leaves(tree, known, batch, vecs)
                index.add([d.id for d in batch], vecs, leaves)
                if docs is not None:
                    docs.write(put=batch)
                if lex is not None:
                    lex.add([(d.id, d.full_text) for d in batch])
                bar.update(len(batch))
        if docs is not None:
            docs.close()
            docs = None
        extra = {"built_from": {"corpus": str(corpus), "export": str(export_dir), "ray": ray is not None,
                                "seconds": round(time.perf_counter() - t0, 2)},
                 "encoder_variant": encoder.variant, "tree": tree is not None}
        extra[SEARCH_KEY] = settings.to_dict()
        create_folder(index_dir, index, export_dir, extra, overwrite, docs_file=docs_path,
                      lexical=LexicalIndex.from_segment(lex.finish(), analyzer) if lex is not None else None)
    finally:
        bar.close()
        if docs is not None:
            docs.close()
        if docs_path is not None:
            docs_path.unlink(missing_ok=True)  # moved into the index on success
    report_left_out(corpus, scan, skip_empty, dropped[0])
    log.info("built %s: %d documents in %.1f s", index_dir, len(index), time.perf_counter() - t0)
    return {**index.stats(), "stores_documents": store_documents, "lexical": lexical, "empty": scan.empty,
            "skipped_empty": scan.empty if skip_empty else 0}


def _checked(corpus: str | os.PathLike[str], batch_size: int, skip_empty: bool,
             dropped: list[int]) -> Iterator[list[Document]]:
    """The corpus in checked chunks of ``batch_size`` documents; metadata entries left out add to ``dropped[0]``."""
    for raw in chunks(iter_corpus(corpus, empty="skip" if skip_empty else "keep"), batch_size):
        batch, n_dropped = check_documents(raw, strict=False)
        dropped[0] += n_dropped
        yield batch


def _encoded(encoder: Any, export_dir: Path, batches: Iterator[list[Document]],
             ray: Any) -> Iterator[tuple[list[Document], Any]]:
    """(chunk, its vectors (n, dim)): encoded here, or chunk by chunk on Ray actors with the same graph."""
    if ray is None:
        return ((batch, encoder.encode_documents([d.full_text for d in batch])) for batch in batches)
    from .ray_encode import encode_stream

    return encode_stream(export_dir, encoder.variant, batches, ray)


def _leaves(tree: Tree | None, known: dict[str, int], batch: list[Document], vecs: Any) -> Any:
    """The export's own leaf for documents the tree was built on, the tree's rule for the others."""
    if tree is None:
        return None
    leaves = np.array([known.get(d.id, NO_LEAF) for d in batch], np.int32)  # (n,)
    new = np.flatnonzero(leaves == NO_LEAF)
    if new.size:
        leaves[new] = tree.assign(vecs[new])
    return leaves
