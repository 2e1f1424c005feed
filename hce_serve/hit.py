"""``Hit``: one search result, the same for every backend, every caller (Python, CLI ``--json``, HTTP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import defaults


@dataclass(frozen=True)
class Hit:
    """One search result. Stored fields are None when not asked for or when the index stores ids only."""

    id: str
    score: float
    title: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None

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
        return out
