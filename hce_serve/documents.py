"""The values every interface shares (Python, CLI ``--json``, HTTP, every backend): a ``Document`` goes in,
a ``Hit`` comes out, and a change reports what it did (``AddResult``, ``DeleteResult``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import defaults


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    metadata: dict[str, Any] | None = None  # flat: string keys, scalar or list-of-scalar values

    @property
    def full_text(self) -> str:
        """Title and text joined as the encoder sees them (BEIR/sentence-transformers convention)."""
        return f"{self.title} {self.text}".strip() if self.title else self.text

    @property
    def is_empty(self) -> bool:
        return not self.full_text.strip()


@dataclass(frozen=True)
class Hit:
    """One search result. Stored fields are None when not asked for or when the index stores ids only."""

    id: str
    score: float
    title: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None
    explain: dict[str, Any] | None = None  # hybrid search's view of the hit: each side's rank and score

    @classmethod
    def of(cls, doc_id: str, score: float, doc: Document | None, fields: Iterable[str],
           explain: dict[str, Any] | None = None) -> Hit:
        """A hit carrying the ``fields`` of its stored ``doc`` (None: ids only, or an index storing no documents)."""
        if doc is None:
            return cls(doc_id, score, explain=explain)
        return cls(doc_id, score, doc.title if "title" in fields else None, doc.text if "text" in fields else None,
                   (doc.metadata or {}) if "metadata" in fields else None, explain)

    def snippet(self, width: int = defaults.SNIPPET_CHARS) -> str:
        """The start of the text on one line, cut at a word boundary."""
        flat = " ".join((self.text or "").split())
        if len(flat) <= width:
            return flat
        return flat[:width].rsplit(" ", 1)[0].rstrip(" ,.;:") + " …"

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: id, score and the stored fields that were asked for."""
        out: dict[str, Any] = {"id": self.id, "score": self.score}
        for name in defaults.FIELDS:
            if (value := getattr(self, name)) is not None:
                out[name] = value
        if self.explain is not None:
            out["explain"] = self.explain
        return out


@dataclass(frozen=True)
class AddResult:
    added: int  # ids that were not live before
    replaced: int  # live ids whose vector was replaced (upsert)
    empty: int = 0  # documents with blank title and text among them (indexed as they are)


@dataclass(frozen=True)
class DeleteResult:
    deleted: list[str]
    missing: list[str]  # ids that were not live: reported, not an error
