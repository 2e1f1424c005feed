"""A lexical part's settings, as an index folder's manifest (``extra["lexical"]``) and a Milvus collection record
them: ``{"analyzer": Analyzer.to_dict(), "bm25": BM25Params.to_dict()}``. The analyzer reads its own half
(``Analyzer.from_dict``); this module owns BM25's parameters and the record's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, FormatError

if TYPE_CHECKING:
    from .analyzer import Analyzer

KEY = "lexical"  # manifest.extra's key
K1, B = 1.5, 0.75  # bm25s' defaults: the BM25 reference the hybrid study (benchmarks/hybrid.py) compares with


@dataclass(frozen=True)
class BM25Params:
    k1: float = K1
    b: float = B

    def __post_init__(self) -> None:
        for name, v, hi in (("k1", self.k1, 10.0), ("b", self.b, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v <= hi):
                raise ConfigError(f"BM25 {name} must be a number in [0, {hi:g}], found {v!r}")

    def to_dict(self) -> dict[str, float]:
        return {"k1": float(self.k1), "b": float(self.b)}


def settings(analyzer: Analyzer, params: BM25Params) -> dict[str, Any]:
    """What the manifest records of a lexical index (no postings: those are files)."""
    return {"analyzer": analyzer.to_dict(), "bm25": params.to_dict()}


def from_settings(s: Any, where: str) -> tuple[Mapping[str, Any], BM25Params]:
    """The record's analyzer settings (for ``Analyzer.from_dict``) and its BM25 parameters, checked."""
    if not isinstance(s, Mapping) or not isinstance(s.get("bm25"), Mapping):
        raise FormatError(f"{where}: extra.{KEY} must hold 'analyzer' and 'bm25' settings")
    try:
        return s.get("analyzer") or {}, BM25Params(**s["bm25"])
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where}: bad BM25 settings ({e})") from None


__all__ = ["B", "K1", "KEY", "BM25Params", "from_settings", "settings"]
