"""What the Engine hands a backend and gets back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import check_leaves, check_vectors
from .documents import Document


@dataclass(frozen=True)
class Batch:
    """Documents that passed ``check_documents``: the input ``IndexStore.add_batch`` takes."""

    docs: list[Document]
    dropped_metadata: int = 0  # metadata entries left out for not being flat (corpus files only)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.docs]

    @property
    def empty(self) -> int:
        return sum(d.is_empty for d in self.docs)

    def rows(self, vectors: Any, leaves: Any, dim: int, no_leaf: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch's vectors (n, dim) float32 and tree leaves (n,) int32, checked against it (every backend's
        add takes them through here); ``leaves`` None gives ``no_leaf`` for all."""
        n = len(self.docs)
        return check_vectors(vectors, n, dim), check_leaves(leaves, n, no_leaf)
