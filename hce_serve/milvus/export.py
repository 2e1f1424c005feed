"""``hce-serve index export-milvus``: copy an index folder's live documents into a Milvus collection.

Per live document: its id, its vector exactly as hnswlib holds it, its tree leaf and the leaf's ancestors,
and (for indexes that store documents) its title, text and metadata, laid out as ``layout.py`` says. A
folder with a lexical part gives the collection its BM25 side (``lexical.py``): each document's terms under
the folder's analyzer, and the folder's k1 and b; its default search settings travel too, so the collection
searches in the folder's mode. The collection's manifest records the encoder's identity, so ``hce-serve
search --milvus`` refuses an export other than the one the index was built with.

The collection is written under its final name and dropped again if the export fails half-way (Milvus
has no atomic rename across all versions milvus-lite and servers share), so a failed export leaves no
half collection behind; ``overwrite`` drops an existing one first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import defaults
from ..batching import progress_bar
from ..documents import Document
from ..errors import BackendError, DataError, FormatError
from ..folder.store import IndexStore
from ..formats.tree import NO_LEAF
from ..lexical.modes import stored_defaults
from ..options import EngineOptions
from .client import MilvusCollection, connect, release, rpc
from .layout import CollectionManifest, MilvusTarget, VectorIndex, check_document, encoder_digest, entity
from .lexical import LexicalSpec

log = logging.getLogger(__name__)


def vector_index_for(store: IndexStore, type: str | None = None, M: int | None = None,
                     ef_construction: int | None = None, ef: int | None = None, nlist: int | None = None,
                     nprobe: int = defaults.MILVUS_NPROBE) -> VectorIndex:
    """The collection's index: by default the folder's own structure — HNSW with its graph's parameters, or
    IVF_SQ8 for an ivf-sq8 folder (whose ``ef_search`` is an nprobe, so an HNSW export of it gets the default beam)."""
    p = store.stats()  # the folder's parameters and live count
    hnsw_folder = p["kind"] == "hnsw"
    type = type or (defaults.MILVUS_INDEX if hnsw_folder else "IVF_SQ8")
    ef = ef or (p["ef_search"] if hnsw_folder else EngineOptions.default_ef("hnsw"))
    return VectorIndex.make(type, M or p["M"], ef_construction or p["ef_construction"], ef, nlist, nprobe,
                            rows=p["live"])


def export_index(engine: Any, target: MilvusTarget, vector_index: VectorIndex | None = None, overwrite: bool = False,
                 batch_size: int = defaults.MILVUS_EXPORT_BATCH, progress: bool = False,
                 lexical: bool = True) -> dict[str, Any]:
    """Write the live documents of ``engine``'s index folder into ``target``; returns what was written.
    ``lexical``: export the folder's lexical part when it has one (False: a dense-only collection)."""
    store = engine.store
    if not isinstance(store, IndexStore):
        raise DataError("export-milvus reads an index folder (open it with Engine.open)")
    t0 = time.perf_counter()
    ids = store.ids()  # live ids, label order
    tree = engine.tree
    vindex = vector_index or vector_index_for(store)
    lex = store.lexical if lexical and store.stores_documents else None
    spec = LexicalSpec(lex.analyzer, lex.params) if lex is not None else None
    search = store.search_defaults if spec is not None else stored_defaults({}, False)
    manifest = CollectionManifest(store.dim, encoder_digest(store.encoder_dir), store.stores_documents, vindex,
                                  int(tree.parent.shape[0]) if tree is not None else None,
                                  {"live": len(ids), "generation": store.stats()["generation"]}, search.to_dict(), spec)
    client = connect(target)
    created = False
    try:
        collection = MilvusCollection.create(client, target.collection, manifest, overwrite=overwrite)
        created = True
        paths: dict[int, list[int]] = {NO_LEAF: []}
        bar = progress_bar(len(ids), progress, "export-milvus")
        for lo in range(0, len(ids), batch_size):
            part = ids[lo : lo + batch_size]
            vecs, leaves = store.vectors(part)  # (n, dim), (n,)
            docs = store.get(part) if store.stores_documents else {}
            rows = []
            for doc_id, vec, leaf in zip(part, vecs, leaves.tolist(), strict=True):
                if leaf not in paths:
                    if tree is None:
                        raise FormatError(f"{store.folder}: documents carry tree leaves but encoder/ has no tree.npz")
                    paths[leaf] = tree.ancestors(leaf)
                doc = docs.get(doc_id) if store.stores_documents else Document(doc_id, "", "")
                if doc is None:
                    raise FormatError(f"{store.folder}: live id {doc_id!r} has no stored document")
                check_document(doc, store.stores_documents, spec)
                rows.append(entity(doc, vec, leaf, paths[leaf], store.stores_documents, spec))
            collection.insert(rows)
            bar.update(len(part))
        bar.close()
        collection.flush()
        if (n := len(collection)) != len(ids):
            raise BackendError(f"Milvus holds {n:,} entities in {target.collection} after the export; {len(ids):,} "
                               "were written")
    except BaseException:
        if created:
            try:
                with rpc(f"drop the half-written collection {target.collection}"):
                    client.drop_collection(target.collection)
            except BackendError as e:  # the export's own error is the one to report
                log.warning("%s", e)
        raise
    finally:
        client.close()
        release(target)
    secs = time.perf_counter() - t0
    log.info("exported %d documents to %s (%s) in %.1f s", len(ids), target.collection, vindex.type, secs)
    return {"collection": target.collection, "exported": len(ids), "dim": manifest.dim,
            "stores_documents": manifest.stores_documents, "index_type": vindex.type, "index_params": vindex.params,
            "search_params": vindex.search, "tree_nodes": manifest.tree_nodes,
            "lexical": spec.to_dict() if spec is not None else None, "mode": search.mode, "seconds": round(secs, 2)}

