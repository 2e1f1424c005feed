"""The model card ``hce_model.json``: what a MODEL_DIR or EXPORT_DIR holds and how to use it.

Written by ``hce-train fit`` (with the tree summary) and by ``hce-export onnx`` (adding the ONNX files
and the measured validation numbers). Serving reads pooling, dimension and max lengths from it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..defaults import DOC_MAX_LENGTH, QUERY_MAX_LENGTH
from ..errors import FormatError
from .versioned import read_versioned_json, require, write_versioned_json

CARD_NAME = "hce_model.json"
CARD_FORMAT = "hce-model"
CARD_VERSION = 1
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class ModelCard:
    """Everything an encoder's user must know beyond the weights.

    ``tree`` is a summary (levels, nodes, branching, docs) or None for a plain encoder. ``onnx`` is set on
    exports: file names per variant and the validation numbers measured at export time.
    """

    dim: int
    base_model: str
    pooling: str = "mean"
    normalize: bool = True
    max_length: int = DOC_MAX_LENGTH  # document tokens
    query_max_length: int = QUERY_MAX_LENGTH
    tree: dict[str, Any] | None = None
    onnx: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise FormatError(f"model card: dim must be positive, found {self.dim}")
        if self.pooling not in POOLINGS:
            raise FormatError(f"model card: pooling must be one of {POOLINGS}, found {self.pooling!r}")
        if self.max_length <= 0 or self.query_max_length <= 0:
            raise FormatError(
                f"model card: max lengths must be positive, found {self.max_length}/{self.query_max_length}"
            )

    @property
    def public_name(self) -> str:
        """The base model's name for clients: a local folder becomes its last component (no filesystem path
        leaks); a hub name (``org/model``) stays as it is."""
        name = self.base_model
        return Path(name).name if Path(name).is_absolute() or name.startswith((".", "~")) else name

    def save(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / CARD_NAME
        write_versioned_json(path, CARD_FORMAT, CARD_VERSION, asdict(self))
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ModelCard:
        path = Path(folder) / CARD_NAME
        obj = read_versioned_json(path, CARD_FORMAT, CARD_VERSION)
        where = str(path)
        try:
            return cls(
                dim=require(obj, "dim", int, where),
                base_model=require(obj, "base_model", str, where),
                pooling=require(obj, "pooling", str, where),
                normalize=require(obj, "normalize", bool, where),
                max_length=require(obj, "max_length", int, where),
                query_max_length=require(obj, "query_max_length", int, where),
                tree=obj.get("tree"),
                onnx=obj.get("onnx"),
                extra=obj.get("extra") or {},
            )
        except FormatError as e:
            msg = str(e)
            raise FormatError(msg if msg.startswith(where) else f"{where}: {msg}") from None

    def replace(self, **changes: Any) -> ModelCard:
        return ModelCard(**{**asdict(self), **changes})
