"""The pymilvus side of the Milvus backend: connecting (milvus-lite in-process or a server by URI), turning
every pymilvus/gRPC failure into a one-line ``BackendError``, and ``MilvusCollection``, the calls for one
collection. Mechanism only: ``MilvusStore`` (``milvus_store.py``) checks what it hands over.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..errors import BackendError, FormatError, missing_dependency
from .layout import MANIFEST_KEY, CollectionManifest, MilvusTarget, ids_expr
from .lexical import SPARSE_FIELD, TEXT_FIELD

log = logging.getLogger(__name__)
ID_CHUNK = 512  # ids per "id in [...]" expression
ID_PAGE = 4096  # ids per page when listing a collection's ids
_LITE_USERS: dict[Path, int] = {}  # milvus-lite files this process has open, with their number of users
_LITE_LOCK = threading.Lock()


def pymilvus_module() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise missing_dependency("pymilvus", "milvus") from None
    # pymilvus logs every failed RPC with its traceback before raising; the raised error says it in one line.
    logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
    return pymilvus


@contextmanager
def rpc(what: str) -> Iterator[None]:
    """Turn pymilvus and gRPC failures into a one-line ``BackendError`` naming the call."""
    pymilvus = pymilvus_module()
    import grpc

    try:
        yield
    except (pymilvus.exceptions.MilvusException, grpc.RpcError) as e:
        msg = getattr(e, "message", None) or str(e)
        raise BackendError(f"Milvus {what}: {' '.join(str(msg).split())[:400]}") from None


def connect(target: MilvusTarget) -> Any:
    """A ``MilvusClient`` for ``target``; milvus-lite is started in this process (refused when another holds it)."""
    pymilvus = pymilvus_module()
    if target.is_lite:
        try:
            import milvus_lite  # noqa: F401 - pymilvus starts it for a .db URI
        except ImportError:
            raise missing_dependency("milvus-lite", "milvus") from None
        # milvus-lite's in-process gRPC server logs the RPCs it lacks (pymilvus falls back) with a traceback.
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        with _LITE_LOCK:
            if not _LITE_USERS.get(target.lite_path):
                _check_lite_lock(target.lite_path)
            _LITE_USERS[target.lite_path] = _LITE_USERS.get(target.lite_path, 0) + 1
    try:
        with rpc(f"connect to {target.uri}"):
            return pymilvus.MilvusClient(uri=str(target.lite_path) if target.is_lite else target.uri,
                                         token=target.token or "", timeout=defaults.MILVUS_TIMEOUT)
    except BaseException:
        release(target)
        raise


def _check_lite_lock(path: Path) -> None:
    lock = path / "LOCK"  # milvus-lite holds an flock on it while a process has the file open
    if not lock.is_file():
        return
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BackendError(f"{path}: open in another process (milvus-lite serves one process per file; "
                           "run a Milvus server for several)") from None
    finally:
        os.close(fd)


def release(target: MilvusTarget) -> None:
    """Stop this process's milvus-lite server for ``target`` once its last user is done."""
    if not target.is_lite:
        return
    with _LITE_LOCK:
        users = _LITE_USERS.get(target.lite_path, 0) - 1
        if users > 0:
            _LITE_USERS[target.lite_path] = users
            return
        _LITE_USERS.pop(target.lite_path, None)
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(target.lite_path))


class MilvusCollection:
    """The pymilvus calls of one collection. Mechanism only: callers pass checked input."""

    def __init__(self, client: Any, name: str, manifest: CollectionManifest) -> None:
        self.client, self.name, self.manifest = client, name, manifest
        self.dim = manifest.dim
        self.doc_fields = ("title", "text", "metadata") if manifest.stores_documents else ()

    @classmethod
    def create(cls, client: Any, name: str, manifest: CollectionManifest, overwrite: bool = False) -> MilvusCollection:
        from .layout import schema

        pymilvus = pymilvus_module()
        with rpc(f"create collection {name}"):
            if client.has_collection(name):
                if not overwrite:
                    raise FormatError(f"Milvus collection {name} already exists (pass --overwrite to replace it)")
                client.drop_collection(name)
            params = client.prepare_index_params()
            # pymilvus 3 sends index parameters as flat keys, which Milvus servers read; milvus-lite 3.2 reads only
            # a JSON "params" key (the older wire form, which servers still merge in). Sending both reaches both.
            p = dict(manifest.index.params)
            params.add_index(field_name="vector", index_type=manifest.index.type, metric_type="IP",
                             params={**p, "params": p})
            if manifest.lexical is not None:
                lp = manifest.lexical.index_params()
                params.add_index(field_name=SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                                 params={**lp, "params": lp})
            client.create_collection(name, schema=schema(pymilvus, manifest),
                                     index_params=params, consistency_level="Strong",
                                     properties={MANIFEST_KEY: manifest.to_json()})
        return cls(client, name, manifest)

    @classmethod
    def open(cls, client: Any, name: str, where: str) -> MilvusCollection:
        with rpc(f"open collection {name}"):
            if not client.has_collection(name):
                raise FormatError(f"{where}: no collection {name} (write one with hce-serve index export-milvus)")
            desc = client.describe_collection(name)
            manifest = CollectionManifest.from_json((desc.get("properties") or {}).get(MANIFEST_KEY), f"{where} {name}")
            fields = {f.get("name") for f in desc.get("fields") or []}
            if manifest.lexical is not None and not {TEXT_FIELD, SPARSE_FIELD} <= fields:
                raise FormatError(f"{where} {name}: its manifest has a lexical side but the collection lacks the "
                                  f"{TEXT_FIELD!r} and {SPARSE_FIELD!r} fields")
            client.load_collection(name)
        return cls(client, name, manifest)

    def __len__(self) -> int:
        with rpc(f"count {self.name}"):
            res = self.client.query(self.name, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self.existing([doc_id]))

    def ids(self) -> list[str]:
        """Every id the collection holds (read in pages: a query returns at most Milvus's result window)."""
        out: list[str] = []
        with rpc(f"list the ids of {self.name}"):
            it = self.client.query_iterator(self.name, batch_size=ID_PAGE, filter="", output_fields=["id"])
            try:
                while page := it.next():
                    out.extend(r["id"] for r in page)
            finally:
                it.close()
        return out

    def existing(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` that the collection holds."""
        return set(self.fetch(ids, ()).keys())

    def fetch(self, ids: Sequence[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{id: {field: value}} for the ids the collection holds."""
        out: dict[str, dict[str, Any]] = {}
        ids = list(dict.fromkeys(ids))
        for lo in range(0, len(ids), ID_CHUNK):
            part = ids[lo : lo + ID_CHUNK]
            with rpc(f"query {self.name}"):
                rows = self.client.query(self.name, filter=ids_expr(part), output_fields=["id", *fields],
                                         limit=len(part))
            out.update((r["id"], r) for r in rows)
        return out

    def upsert(self, rows: list[dict[str, Any]]) -> None:
        for part in _byte_batches(rows):
            with rpc(f"upsert into {self.name}"):
                self.client.upsert(self.name, part)

    def insert(self, rows: list[dict[str, Any]]) -> None:
        for part in _byte_batches(rows):
            with rpc(f"insert into {self.name}"):
                self.client.insert(self.name, part)

    def delete(self, ids: Sequence[str]) -> None:
        for lo in range(0, len(ids), ID_CHUNK):
            with rpc(f"delete from {self.name}"):
                self.client.delete(self.name, filter=ids_expr(list(ids[lo : lo + ID_CHUNK])))

    def search(self, vectors: np.ndarray, k: int, expr: str, params: dict[str, Any],
               fields: Sequence[str]) -> list[list[tuple[str, float, dict[str, Any]]]]:
        """Top-``k`` (id, inner product, {field: value}) per query row, best first."""
        with rpc(f"search {self.name}"):
            # anns_field: a collection with a lexical side has two vector fields, and Milvus asks which one
            res = self.client.search(self.name, data=[v for v in np.asarray(vectors, np.float32)], limit=k, filter=expr,
                                     output_fields=list(fields) or ["leaf"], search_params=params, anns_field="vector")
        return [[(h["id"], float(h["distance"]), h.get("entity") or {}) for h in row] for row in res]

    def metadata_sample(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` documents' ``{"metadata": ...}``, in the collection's own order."""
        with rpc(f"query {self.name}"):
            return self.client.query(self.name, filter="", output_fields=["metadata"], limit=limit)

    def search_lexical(self, queries: Sequence[str], k: int, expr: str,
                       fields: Sequence[str]) -> list[list[tuple[str, float, dict[str, Any]]]]:
        """BM25's top-``k`` (id, Milvus's distance, {field: value}) per analysed query text, best first."""
        with rpc(f"full-text search {self.name}"):
            res = self.client.search(self.name, data=list(queries), limit=k, filter=expr, anns_field=SPARSE_FIELD,
                                     output_fields=list(fields) or ["leaf"], search_params={"metric_type": "BM25"})
        return [[(h["id"], float(h["distance"]), h.get("entity") or {}) for h in row] for row in res]

    def flush(self) -> None:
        with rpc(f"flush {self.name}"):
            self.client.flush(self.name)

    def stats(self) -> dict[str, Any]:
        m = self.manifest
        return {"backend": "milvus", "collection": self.name, "dim": self.dim, "live": len(self),
                "index_type": m.index.type, "index_params": m.index.params, "search_params": m.index.search,
                "tree_nodes": m.tree_nodes, "source": m.source,
                "lexical": m.lexical.to_dict() if m.lexical is not None else None}


def _byte_batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Slices of at most MILVUS_EXPORT_BATCH rows and about MILVUS_EXPORT_BYTES (a server bounds an RPC)."""
    part: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        n = 4 * len(row["vector"]) + sum(len(str(row.get(f, ""))) for f in ("id", "title", "text", "metadata", "tags",
                                                                            TEXT_FIELD))
        if part and (len(part) >= defaults.MILVUS_EXPORT_BATCH or size + n > defaults.MILVUS_EXPORT_BYTES):
            yield part
            part, size = [], 0
        part.append(row)
        size += n
    if part:
        yield part


