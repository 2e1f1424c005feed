"""How an HCE index is laid out in a Milvus collection: the schema, the manifest it carries, the entity rows
and the filter expressions. Pure functions and value types; the pymilvus calls live in ``milvus_store.py``.

One entity per live document:

```
id        VARCHAR primary key (the document id)
vector    FLOAT_VECTOR(dim), metric IP; index HNSW (M, efConstruction) or IVF_FLAT / IVF_SQ8 (nlist), or FLAT
leaf      INT32: the tree node the document hangs under (-1: no tree)
path      ARRAY<INT32>: the nodes from the first level below the root down to ``leaf`` (its ancestors)
title, text  VARCHAR   (collections that store documents)
metadata  JSON: the flat metadata object as stored locally
tags      ARRAY<VARCHAR>: one token ``<key as JSON>=<canonical value>`` per metadata value: the filter index
lexical, lexical_bm25   the BM25 side (exported from a folder with a lexical part): ``milvus/lexical.py``
```

A filter ``{"lang": ["en", "de"], "year": 2021}`` becomes ``array_contains_any(tags, [...]) and ...`` over the
same canonical values SQLite matches (``checks.canonical_value``: 2021.0 matches 2021, true is not 1), and a
subtree search ``array_contains(path, node)``: one expression, whatever the subtree's size. Strings enter
expressions only through ``quote`` (milvus-lite and the server parse the same escapes); pymilvus's own
``get``/``delete(ids=...)`` do not escape quotes in ids, so they are not used.

The collection's properties carry its manifest (``hce.manifest``, JSON): the format version, the dimension,
the encoder's identity (sha256 of its ``hce_model.json`` and ``tree.npz``), the vector index and its search
parameters, the folder's default search settings (``search``), and for a collection with a lexical side its
analyzer and BM25 parameters (``lexical``; format_version 2, so an hce that predates it refuses the collection
instead of writing rows without the lexical field). A collection of format_version 1 opens as dense-only.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import defaults
from ..checks import canonical_value
from ..documents import Document
from ..errors import DataError, FormatError, VersionError
from ..formats.card import CARD_NAME
from ..formats.tree import TREE_NAME
from ..options import Bound, EngineOptions
from .lexical import TEXT_FIELD as LEXICAL_TEXT
from .lexical import LexicalSpec

MANIFEST_KEY = "hce.manifest"  # collection property holding the manifest
FORMAT, FORMAT_VERSION = "hce-milvus", 2
DENSE_ONLY_VERSION = 1  # a collection without the lexical side is written as version 1: older hce still opens it
INDEX_TYPES = ("HNSW", "IVF_FLAT", "IVF_SQ8", "FLAT")  # IVF_SQ8: one byte a dimension
MAX_VARCHAR = 65_535  # bytes: Milvus's bound on a VARCHAR field
MAX_JSON = 65_536  # bytes: Milvus's bound on a JSON field
MAX_TAGS = 4_096  # Milvus's bound on an ARRAY field's capacity
MAX_TAG_BYTES = 1_024  # longer tokens are stored as a digest of themselves (still exact to match)
MAX_LEVELS = 64  # tree depth an ARRAY<INT32> path holds
IVF_PARAM = Bound(1, 65_536)  # Milvus's range for nlist and nprobe
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # Milvus's collection-name rule
DOC_FIELDS = ("title", "text", "metadata")


@dataclass(frozen=True)
class MilvusTarget:
    """Where a collection lives: ``uri`` a milvus-lite file (``./x.db``) or a server (``http://host:19530``)."""

    uri: str
    collection: str
    token: str | None = None  # "user:password" or an API key, for servers that need one

    def __post_init__(self) -> None:
        if not isinstance(self.collection, str) or not NAME_RE.fullmatch(self.collection):
            raise DataError(f"collection name {self.collection!r} must start with a letter or underscore and hold "
                            "only letters, digits and underscores (at most 255)")
        server = isinstance(self.uri, str) and self.uri.startswith(("http://", "https://", "tcp://"))
        if not isinstance(self.uri, str) or not (self.is_lite or server):
            raise DataError(f"Milvus URI {self.uri!r} must be a milvus-lite file ending in .db or a server address "
                            "(http://host:19530, https://…)")
        if self.is_lite and not Path(self.uri).expanduser().resolve().parent.is_dir():
            raise DataError(f"{self.uri}: its folder does not exist")

    @property
    def is_lite(self) -> bool:
        return isinstance(self.uri, str) and self.uri.endswith(".db")

    @property
    def lite_path(self) -> Path:
        return Path(self.uri).expanduser().resolve()


@dataclass(frozen=True)
class VectorIndex:
    """The collection's vector index and its default search parameters (``defaults.MILVUS_*``)."""

    type: str = defaults.MILVUS_INDEX
    params: dict[str, int] = field(default_factory=dict)  # HNSW: M, efConstruction; IVF_*: nlist
    search: dict[str, int] = field(default_factory=dict)  # HNSW: ef; IVF_*: nprobe

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise DataError(f"Milvus index type must be one of {', '.join(INDEX_TYPES)}, found {self.type!r}")
        bounds = {"M": EngineOptions.M, "efConstruction": EngineOptions.EF, "ef": EngineOptions.EF}
        for name, v in {**self.params, **self.search}.items():
            bounds.get(name, IVF_PARAM).check(f"Milvus index parameter {name}", v, DataError)

    @classmethod
    def make(cls, type: str = defaults.MILVUS_INDEX, M: int = defaults.M,
             ef_construction: int = defaults.EF_CONSTRUCTION, ef: int = defaults.EF_SEARCH, nlist: int | None = None,
             nprobe: int = defaults.MILVUS_NPROBE, rows: int = 0) -> VectorIndex:
        """HNSW with the local index's M/efConstruction/ef by default; IVF_FLAT / IVF_SQ8 with nlist ~ 4 sqrt(rows)."""
        if type == "HNSW":
            return cls(type, {"M": M, "efConstruction": ef_construction}, {"ef": ef})
        if type.startswith("IVF_"):
            nlist = nlist or min(IVF_PARAM.hi, max(1, int(4 * rows**0.5)))
            return cls(type, {"nlist": nlist}, {"nprobe": min(nprobe, nlist)})
        return cls(type)

    def search_params(self, k: int, ef: int | None) -> dict[str, Any]:
        """pymilvus ``search_params``: ``ef`` is the HNSW beam (at least k, as hnswlib searches with max(ef, k))."""
        if self.type == "HNSW":
            return {"metric_type": "IP", "params": {"ef": max(k, ef or self.search.get("ef", defaults.EF_SEARCH))}}
        if ef is not None:
            raise DataError(f"ef is the HNSW beam; this collection's index is {self.type} "
                            f"(nprobe {self.search.get('nprobe', '-')} set at export)")
        return {"metric_type": "IP", "params": dict(self.search)}


@dataclass(frozen=True)
class CollectionManifest:
    """What a collection is: read from, and written to, its ``hce.manifest`` property."""

    dim: int
    encoder_sha256: str  # ``encoder_digest`` of the export that wrote it: search with that one
    stores_documents: bool
    index: VectorIndex
    tree_nodes: int | None = None  # nodes of the corpus tree paths refer to (None: no tree)
    source: dict[str, Any] = field(default_factory=dict)  # what it was exported from (live count, generation)
    search: dict[str, Any] = field(default_factory=dict)  # the folder's default mode, fusion, alpha and depth
    lexical: LexicalSpec | None = None  # the BM25 side (None: a dense-only collection)

    def to_json(self) -> str:
        body = {k: getattr(self, k) for k in ("dim", "encoder_sha256", "stores_documents", "tree_nodes", "source",
                                              "search")}
        version = DENSE_ONLY_VERSION if self.lexical is None else FORMAT_VERSION
        lexical = {} if self.lexical is None else {"lexical": self.lexical.to_dict()}
        return json.dumps({"format": FORMAT, "format_version": version, **body, "index": asdict(self.index), **lexical})

    @classmethod
    def from_json(cls, text: str | None, where: str) -> CollectionManifest:
        try:
            obj = json.loads(text) if text else None
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: its {MANIFEST_KEY} property is not JSON ({e.msg})") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise FormatError(f"{where}: not an HCE collection (no {MANIFEST_KEY} property of format {FORMAT!r}); "
                              "write one with hce-serve index export-milvus")
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise VersionError(f"{where}: format_version {version!r} is newer than this hce supports "
                               f"({FORMAT_VERSION})")
        try:
            index = VectorIndex(**obj["index"])
            manifest = cls(int(obj["dim"]), str(obj["encoder_sha256"]), bool(obj["stores_documents"]), index,
                           obj.get("tree_nodes"), dict(obj.get("source") or {}), dict(obj.get("search") or {}))
        except (KeyError, TypeError, ValueError, DataError) as e:
            raise FormatError(f"{where}: bad {MANIFEST_KEY} ({type(e).__name__}: {e})") from None
        if obj.get("lexical") is None:
            return manifest
        if not manifest.stores_documents:
            raise FormatError(f"{where}: bad {MANIFEST_KEY} (a lexical side needs the stored documents)")
        return replace(manifest, lexical=LexicalSpec.from_dict(obj["lexical"], f"{where} {MANIFEST_KEY}"))


def encoder_digest(encoder_dir: Path) -> str:
    """What identifies an export (or an index's ``encoder/`` copy, byte for byte the same): sha256 over its
    model card and its corpus tree (the tree the stored paths refer to; hashed at ~1 GB/s)."""
    card = Path(encoder_dir) / CARD_NAME
    if not card.is_file():
        raise FormatError(f"{card}: file not found (expected the export's model card)")
    h = hashlib.sha256(card.read_bytes())
    tree = Path(encoder_dir) / TREE_NAME
    if tree.is_file():
        with open(tree, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


# ---- expressions --------------------------------------------------------------------------------------
def quote(s: str) -> str:
    """A string literal both Milvus parsers read back as ``s``."""
    escaped = s.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def tag(key: str, canonical: str) -> str:
    """The filter token of one metadata value (``canonical``: ``checks.canonical_value``'s text)."""
    token = f"{json.dumps(key, ensure_ascii=False)}={canonical}"
    if len(token.encode("utf-8")) <= MAX_TAG_BYTES:
        return token
    return f"{json.dumps(key, ensure_ascii=False)}#sha256:{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


def ids_expr(ids: list[str]) -> str:
    return f"id in [{', '.join(quote(i) for i in ids)}]"


def filter_expr(flt: dict[str, tuple[str, ...]] | None, subtree_node: int | None) -> str:
    """The expression of a checked filter (``checks.check_filter``) and a subtree's node, "" for neither."""
    parts = [f"array_contains_any(tags, [{', '.join(quote(tag(k, v)) for v in vals)}])"
             for k, vals in (flt or {}).items()]
    if subtree_node is not None:  # node 0 (the root) holds every document that has a leaf
        parts.append("leaf >= 0" if subtree_node == 0 else f"array_contains(path, {int(subtree_node)})")
    return " and ".join(parts)


# ---- entities -----------------------------------------------------------------------------------------
def document_tags(doc: Document) -> list[str]:
    vals = ((k, v) for k, val in (doc.metadata or {}).items() for v in (val if isinstance(val, list) else [val]))
    return sorted({tag(k, canonical_value(v)) for k, v in vals})


def check_document(doc: Document, stores_documents: bool, lexical: LexicalSpec | None = None) -> None:
    """Refuse, by name, a document a Milvus collection cannot hold (nothing is silently cut)."""
    if len(doc.id.encode("utf-8")) > MAX_VARCHAR:
        raise DataError(f"document id {doc.id[:40]!r}…: longer than Milvus's {MAX_VARCHAR:,}-byte VARCHAR")
    if not stores_documents:
        return
    for name in ("title", "text"):
        if (n := len(getattr(doc, name).encode("utf-8"))) > MAX_VARCHAR:
            raise DataError(f"document {doc.id!r}: {name} is {n:,} bytes; a Milvus VARCHAR holds {MAX_VARCHAR:,}")
    if doc.metadata and (n := len(json.dumps(doc.metadata, ensure_ascii=False).encode("utf-8"))) > MAX_JSON:
        raise DataError(f"document {doc.id!r}: metadata is {n:,} bytes of JSON; a Milvus JSON field holds {MAX_JSON:,}")
    if (n := len(document_tags(doc))) > MAX_TAGS:
        raise DataError(f"document {doc.id!r}: {n:,} metadata values; a Milvus collection filters on {MAX_TAGS:,}")
    # The terms are never longer than the text they come from: only a title and text over one VARCHAR together
    # are analysed here to check.
    if (lexical is not None and len(doc.full_text.encode("utf-8")) > MAX_VARCHAR
            and (n := len(lexical.text(doc).encode("utf-8"))) > MAX_VARCHAR):
        raise DataError(f"document {doc.id!r}: its index terms are {n:,} bytes; a Milvus VARCHAR holds {MAX_VARCHAR:,}")


def entity(doc: Document, vector: Any, leaf: int, path: list[int], stores_documents: bool,
           lexical: LexicalSpec | None = None) -> dict[str, Any]:
    """One row for insert/upsert (``doc`` checked by ``check_document``); Milvus computes ``lexical_bm25``."""
    row: dict[str, Any] = {"id": doc.id, "vector": vector, "leaf": int(leaf), "path": path}
    if stores_documents:
        row.update(title=doc.title, text=doc.text, metadata=doc.metadata or {}, tags=document_tags(doc))
    if lexical is not None:
        row[LEXICAL_TEXT] = lexical.text(doc)
    return row


def as_document(doc_id: str, ent: dict[str, Any]) -> Document:
    return Document(doc_id, ent.get("title") or "", ent.get("text") or "", ent.get("metadata") or None)


def schema(pymilvus: Any, manifest: CollectionManifest) -> Any:
    """The collection schema of the module docstring."""
    data_type = pymilvus.DataType
    s = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description="HCE index (hce-serve)")
    s.add_field("id", data_type.VARCHAR, is_primary=True, max_length=MAX_VARCHAR)
    s.add_field("vector", data_type.FLOAT_VECTOR, dim=manifest.dim)
    s.add_field("leaf", data_type.INT32)
    s.add_field("path", data_type.ARRAY, element_type=data_type.INT32, max_capacity=MAX_LEVELS)
    if manifest.stores_documents:
        s.add_field("title", data_type.VARCHAR, max_length=MAX_VARCHAR)
        s.add_field("text", data_type.VARCHAR, max_length=MAX_VARCHAR)
        s.add_field("metadata", data_type.JSON)
        s.add_field("tags", data_type.ARRAY, element_type=data_type.VARCHAR, max_capacity=MAX_TAGS,
                    max_length=MAX_TAG_BYTES + 80)  # a key of 128 characters as JSON, then its digest
    if manifest.lexical is not None:
        manifest.lexical.add_fields(s, pymilvus, MAX_VARCHAR)
    return s
