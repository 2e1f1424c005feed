"""The index's value types: its parameters (stored in the manifest) and the results of its changes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import defaults
from .errors import ConfigError

NO_LEAF = -1  # leaf of a free slot or of a document in an index without a tree
ScoredId = tuple[str, float]  # (document id, inner product)


@dataclass(frozen=True)
class IndexParams:
    """HNSW and maintenance knobs, stored in the manifest (defaults: ``defaults.py``)."""

    M: int = defaults.M
    ef_construction: int = defaults.EF_CONSTRUCTION
    ef_search: int = defaults.EF_SEARCH
    space: str = "ip"  # documents and queries are L2-normalised: inner product = cosine
    exact_threshold: int = defaults.EXACT_THRESHOLD
    compact_ratio: float = defaults.COMPACT_RATIO
    compact_min_deleted: int = defaults.COMPACT_MIN_DELETED

    def __post_init__(self) -> None:
        if self.space != "ip":
            raise ConfigError(f"index space must be 'ip' (normalised vectors), found {self.space!r}")
        for name in ("M", "ef_construction", "ef_search"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise ConfigError(f"{name} must be between 1 and 100000, found {getattr(self, name)}")
        if self.exact_threshold < 0 or self.compact_min_deleted < 0:
            raise ConfigError("exact_threshold and compact_min_deleted must be >= 0")
        if not 0.0 < self.compact_ratio <= 1.0:
            raise ConfigError(f"compact_ratio must be in (0, 1], found {self.compact_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AddResult:
    added: int  # ids that were not live before
    replaced: int  # live ids whose vector was replaced (upsert)
    empty: int = 0  # documents with blank title and text among them (indexed as they are)


@dataclass(frozen=True)
class DeleteResult:
    deleted: list[str]
    missing: list[str]  # ids that were not live: reported, not an error


@dataclass
class IndexState:
    """The arrays behind an index, as ``index_io`` reads and writes them (row i = label i)."""

    hnsw: Any  # hnswlib.Index
    ids: list[str]  # "" for a free slot
    deleted: np.ndarray  # (labels,) bool
    leaves: np.ndarray  # (labels,) int32
