"""The option objects and the bounds every entry point checks: ``IndexParams``, an index folder's structure knobs
(stored in its manifest)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from . import defaults
from .errors import ConfigError

KINDS = defaults.INDEX_TYPES  # vector structures of an index folder (ann.py)
IVF_ONLY = ("nlist", "refine")  # parameters an hnsw folder does not write (older releases refuse unknown keys)


@dataclass(frozen=True)
class IndexParams:
    """Vector-structure and maintenance knobs, stored in the manifest (defaults: ``defaults.py``).

    ``ef_search`` is the default search breadth: the HNSW beam, or for ``ivf-sq8`` the cells scanned (nprobe).
    """

    M: int = defaults.M
    ef_construction: int = defaults.EF_CONSTRUCTION
    ef_search: int = defaults.EF_SEARCH
    space: str = "ip"  # documents and queries are L2-normalised: inner product = cosine
    exact_threshold: int = defaults.EXACT_THRESHOLD
    compact_ratio: float = defaults.COMPACT_RATIO
    compact_min_deleted: int = defaults.COMPACT_MIN_DELETED
    kind: str = "hnsw"
    nlist: int = defaults.NLIST  # ivf-sq8: cells (0: ~sqrt(live) at each training)
    refine: int = defaults.REFINE  # ivf-sq8: candidates re-scored on fp32, per hit asked for

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(KINDS)}; found {self.kind!r}")
        if not 0 <= self.nlist <= 1_000_000 or not 1 <= self.refine <= 1000:
            raise ConfigError(f"nlist must be in [0, 1000000] and refine in [1, 1000]; found {self.nlist}, {self.refine}")
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
        d = asdict(self)
        if self.kind == "hnsw":  # the same keys as before kinds existed: older releases still load the folder
            for key in ("kind", *IVF_ONLY):
                d.pop(key)
        return d
