"""The index manifest ``IDX_DIR/manifest.json``: the last file an index save writes.

It names every data file with its size and sha256, the counts and the HNSW parameters, so a load can
say exactly what is wrong with a folder (a missing, truncated or foreign file).

Versions: 1 = vectors and ids only; 2 adds ``documents``, the name of the SQLite document store inside the
folder. A folder without stored documents is still written as version 1, so older hce releases keep
reading it; one with documents is version 2, so they refuse it instead of changing its vectors without its
documents.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..formats.versioned import read_versioned_json, require, write_versioned_json

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "hce-index"
MANIFEST_VERSION = 2  # newest version written and read
SPACES = ("ip", "cosine", "l2")


def file_digest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """{"bytes": size, "sha256": hex} of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


@dataclass(frozen=True)
class IndexManifest:
    dim: int
    space: str
    M: int
    ef_construction: int
    ef_search: int
    counts: dict[str, int]  # labels (slots used), live, deleted, capacity
    files: dict[str, dict[str, Any]]  # relative path -> {"bytes", "sha256"}
    generation: int = 0  # increases on every save; names the mutation log that follows it
    documents: str | None = None  # file name of the document store (version 2), None: ids only
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise FormatError(f"manifest: dim must be positive, found {self.dim}")
        if self.space not in SPACES:
            raise FormatError(f"manifest: space must be one of {SPACES}, found {self.space!r}")
        for key in ("labels", "live", "deleted"):
            if not isinstance(self.counts.get(key), int) or self.counts[key] < 0:
                raise FormatError(f"manifest: counts.{key} must be a non-negative integer, found "
                                  f"{self.counts.get(key)!r}")
        cap = self.counts.get("capacity", 0)
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
            raise FormatError(f"manifest: counts.capacity must be a non-negative integer, found {cap!r}")
        if self.documents is not None and (not isinstance(self.documents, str) or not self.documents
                                           or "/" in self.documents or self.documents.startswith(".")):
            raise FormatError("manifest: documents must be a file name inside the index folder, found "
                              f"{self.documents!r}")
        if not isinstance(self.extra, dict):
            raise FormatError(f"manifest: extra must be an object, found {type(self.extra).__name__}")
        for rel, meta in self.files.items():
            # Listed files are relative paths inside the index folder, each with its size and sha256.
            if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
                raise FormatError(f"manifest: file name {rel!r} is not a relative path inside the index folder")
            if (not isinstance(meta, dict) or not isinstance(meta.get("bytes"), int) or isinstance(meta["bytes"], bool)
                    or not isinstance(meta.get("sha256"), str)):
                raise FormatError(f"manifest: files[{rel!r}] must be {{\"bytes\": int, \"sha256\": str}}, found "
                                  f"{meta!r:.100}")
        if self.counts["live"] + self.counts["deleted"] != self.counts["labels"]:
            raise FormatError(
                f"manifest: live ({self.counts['live']:,}) + deleted ({self.counts['deleted']:,}) "
                f"!= labels ({self.counts['labels']:,})"
            )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / MANIFEST_NAME
        body = asdict(self)
        if self.documents is None:  # version 1 has no such field: keep ids-only folders readable by old releases
            del body["documents"]
        write_versioned_json(path, MANIFEST_FORMAT, MANIFEST_VERSION if self.documents else 1, body)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> IndexManifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise FormatError(f"{folder}: no {MANIFEST_NAME}; not an HCE index folder (or its first save never "
                              "finished)")
        obj = read_versioned_json(path, MANIFEST_FORMAT, MANIFEST_VERSION)
        w = str(path)
        try:
            return cls(
                dim=require(obj, "dim", int, w),
                space=require(obj, "space", str, w),
                M=require(obj, "M", int, w),
                ef_construction=require(obj, "ef_construction", int, w),
                ef_search=require(obj, "ef_search", int, w),
                counts=require(obj, "counts", dict, w),
                files=require(obj, "files", dict, w),
                generation=require(obj, "generation", int, w),
                documents=obj.get("documents"),
                extra=obj.get("extra") or {},
            )
        except FormatError as e:
            raise FormatError(str(e) if str(e).startswith(w) else f"{w}: {e}") from None

    def verify_files(self, folder: str | os.PathLike[str], checksums: bool = True) -> None:
        """Check that every listed file exists with the recorded size (and sha256)."""
        for rel, meta in self.files.items():
            p = Path(folder) / rel
            if not p.is_file():
                raise FormatError(f"{p}: listed in the manifest but missing")
            size = p.stat().st_size
            if size != meta.get("bytes"):
                raise FormatError(f"{p}: manifest says {meta.get('bytes'):,} bytes, found {size:,} (truncated or "
                                  "replaced)")
            if checksums and file_digest(p)["sha256"] != meta.get("sha256"):
                raise FormatError(f"{p}: sha256 differs from the manifest (corrupted)")
