"""Index folders with stored documents for the store tests: a small one per test, and the agreement check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hce_serve.documents import Document
from hce_serve.folder.store import IndexStore
from hce_serve.index.index import Index
from hce_serve.options import IndexParams

DIM = 8


def unit(seed: int, n: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def doc(i: int | str, version: int = 0) -> Document:
    return Document(f"d{i}", f"title {i} v{version}", f"text of {i}", {"version": version})


def make_store(folder: Path, n: int = 50, lexical: bool = False, **params) -> Path:
    """``lexical``: with the BM25 part of hybrid search, as ``index build`` makes by default."""
    from hce_serve.lexical.bm25 import LexicalIndex

    idx = Index(DIM, IndexParams(exact_threshold=0, **params), capacity=16)
    docs = [doc(i) for i in range(n)]
    idx.add([d.id for d in docs], unit(0, n))
    lex = LexicalIndex.build((d.id, d.full_text) for d in docs) if lexical else None
    IndexStore.create(folder, idx, None, documents=docs, lexical=lex)
    return folder


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_store(tmp_path / "idx")


def agree(folder: Path) -> tuple[set[str], set[str]]:
    """(live ids of the vector index, ids of the document store) as a writer's open leaves them."""
    with IndexStore.open(folder, writable=True) as s:
        return set(s.index.ids()), s.docs.ids()
