"""The two option objects and every bound a caller's value is checked against, defined once.

- ``EngineOptions``: how an ``Engine`` encodes and searches (encoder graph, threads, query encoder, query
  cache); chosen per process, never stored.
- ``IndexParams``: how an index folder organises its vectors (structure kind, graph degree, beams, cells);
  stored in the folder's manifest.

Click ranges, HTTP request descriptions, ``IndexParams`` and ``checks`` all read the bounds on
``EngineOptions`` (``EngineOptions.EF``, ``.M``, ``.K`` …): a bound typed twice drifts (``--M`` once allowed
256 where export-milvus allowed 2048). The values of the defaults are ``defaults.py``'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

from . import defaults
from .errors import ConfigError, HCEError

KINDS = defaults.INDEX_TYPES  # vector structures of an index folder (index/structures.py)
IVF_ONLY = ("nlist", "refine")  # parameters an hnsw folder does not write (older releases refuse unknown keys)


@dataclass(frozen=True)
class Bound:
    """An integer range ``lo..hi`` (``hi`` None: no upper end), checked with the same message everywhere."""

    lo: int
    hi: int | None = None

    def __contains__(self, value: object) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and self.lo <= value
                and (self.hi is None or value <= self.hi))

    def __iter__(self) -> Iterator[int | None]:  # click.IntRange(*bound)
        return iter((self.lo, self.hi))

    @property
    def text(self) -> str:
        return f"between {self.lo:,} and {self.hi:,}" if self.hi is not None else f"of at least {self.lo:,}"

    def check(self, name: str, value: object, error: type[HCEError] = ConfigError) -> int:
        """``value`` when it is an integer in range, else ``error`` naming ``name``, the range and the value."""
        if value not in self:
            raise error(f"{name} must be an integer {self.text}, found {value!r}")
        return value  # type: ignore[return-value]


@dataclass(frozen=True)
class EngineOptions:
    """How an Engine encodes and searches (``Engine.open(..., **options)`` takes the same names)."""

    variant: str = defaults.VARIANT  # encoder graph: auto | int8 | fp32 | fp16
    threads: int | None = None  # onnxruntime intra-op threads per encoder call (None: onnxruntime's choice)
    search_threads: int | None = None  # threads one request's index search may use (-1: all cores; None: threads or 1)
    query_encoder: str = defaults.QUERY_ENCODER  # auto | full | shallow
    query_cache: int = defaults.QUERY_CACHE  # query embeddings kept (0: off)
    providers: tuple[str, ...] | None = None  # onnxruntime execution providers (None: CPU)

    VARIANTS: ClassVar[tuple[str, ...]] = ("auto", "int8", "fp32", "fp16")
    QUERY_ENCODERS: ClassVar[tuple[str, ...]] = defaults.QUERY_ENCODERS
    THREADS: ClassVar[Bound] = Bound(1, 1024)
    QUERY_CACHE: ClassVar[Bound] = Bound(0)
    K: ClassVar[Bound] = Bound(1, defaults.MAX_K)  # hits per query
    EF: ClassVar[Bound] = Bound(1, 100_000)  # search breadth (HNSW beam, IVF cells scanned) and the HNSW build beam
    M: ClassVar[Bound] = Bound(2, 2048)  # HNSW graph degree: hnswlib needs 2, Milvus takes up to 2048
    NLIST: ClassVar[Bound] = Bound(0, 1_000_000)  # ivf-sq8 cells (0: ~sqrt(live documents))
    REFINE: ClassVar[Bound] = Bound(1, 1000)  # ivf-sq8 candidates re-scored per hit
    BATCH_SIZE: ClassVar[Bound] = Bound(1, defaults.MAX_BATCH_SIZE)  # documents per build/add step
    # The default search breadth of each index kind: its meaning differs (a beam vs cells scanned), so one
    # number for both would make an IVF scan a hundred cells, or an HNSW beam 32 wide.
    DEFAULT_EF: ClassVar[dict[str, int]] = {"hnsw": defaults.EF_SEARCH, "ivf-sq8": defaults.NPROBE}

    def __post_init__(self) -> None:
        if self.variant not in self.VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(self.VARIANTS)}, found {self.variant!r}")
        if self.query_encoder not in self.QUERY_ENCODERS:
            raise ConfigError(f"query_encoder must be one of {', '.join(self.QUERY_ENCODERS)}, "
                              f"found {self.query_encoder!r}")
        if self.threads is not None:
            self.THREADS.check("threads", self.threads)
        if self.search_threads is not None and self.search_threads != -1:
            self.THREADS.check("search_threads (or -1, all cores)", self.search_threads)
        self.QUERY_CACHE.check("query_cache", self.query_cache)
        if self.providers is not None:
            if isinstance(self.providers, str) or not all(isinstance(p, str) for p in self.providers):
                raise ConfigError(f"providers must be a list of onnxruntime provider names, found {self.providers!r}")
            object.__setattr__(self, "providers", tuple(self.providers))

    @property
    def index_threads(self) -> int:
        """The threads a search gives the index when the caller names none: ``search_threads``, else the
        encoder's ``threads`` (a request's cores serve its whole path), else 1."""
        return self.search_threads if self.search_threads is not None else (self.threads or 1)

    @property
    def encoder_args(self) -> dict[str, Any]:
        """The keyword arguments of ``Encoder`` these options choose."""
        return {"variant": self.variant, "threads": self.threads, "providers": self.providers,
                "query_encoder": self.query_encoder}

    def replace(self, **changes: Any) -> EngineOptions:
        unknown = sorted(set(changes) - {f for f in self.__dataclass_fields__})
        if unknown:
            raise ConfigError(f"unknown engine option(s) {', '.join(unknown)}; "
                              f"known: {', '.join(self.__dataclass_fields__)}")
        return replace(self, **changes)

    @classmethod
    def default_ef(cls, kind: str) -> int:
        """The default search breadth of an index of this kind: the HNSW beam, or the IVF cells scanned."""
        if kind not in cls.DEFAULT_EF:
            raise ConfigError(f"index kind must be one of {', '.join(KINDS)}; found {kind!r}")
        return cls.DEFAULT_EF[kind]


@dataclass(frozen=True)
class IndexParams:
    """Vector-structure and maintenance knobs, stored in the manifest (defaults: ``defaults.py``).

    ``ef_search`` is the default search breadth: the HNSW beam, or for ``ivf-sq8`` the cells scanned (nprobe);
    None takes the kind's own default (``EngineOptions.default_ef``).
    """

    M: int = defaults.M
    ef_construction: int = defaults.EF_CONSTRUCTION
    ef_search: int | None = None  # None: the kind's default (an int once constructed)
    space: str = "ip"  # documents and queries are L2-normalised: inner product = cosine
    exact_threshold: int = defaults.EXACT_THRESHOLD
    compact_ratio: float = defaults.COMPACT_RATIO
    compact_min_deleted: int = defaults.COMPACT_MIN_DELETED
    kind: str = defaults.INDEX_TYPE
    nlist: int = defaults.NLIST  # ivf-sq8: cells (0: ~sqrt(live) at each training)
    refine: int = defaults.REFINE  # ivf-sq8: candidates re-scored on fp32, per hit asked for

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(KINDS)}; found {self.kind!r}")
        if self.ef_search is None:
            object.__setattr__(self, "ef_search", EngineOptions.default_ef(self.kind))
        if self.space != "ip":
            raise ConfigError(f"index space must be 'ip' (normalised vectors), found {self.space!r}")
        o = EngineOptions
        for name, bound in (("M", o.M), ("ef_construction", o.EF), ("ef_search", o.EF), ("nlist", o.NLIST),
                            ("refine", o.REFINE), ("exact_threshold", Bound(0)), ("compact_min_deleted", Bound(0))):
            bound.check(name, getattr(self, name))
        if not 0.0 < self.compact_ratio <= 1.0:
            raise ConfigError(f"compact_ratio must be in (0, 1], found {self.compact_ratio}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.kind == "hnsw":  # the same keys as before kinds existed: older releases still load the folder
            for key in ("kind", *IVF_ONLY):
                d.pop(key)
        return d

