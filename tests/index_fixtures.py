"""Index fixtures shared by the HTTP and security tests: a tiny index built once per module, a fresh
copy per test, and a writable Engine on that copy. Import the three names into a test module to use them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hce_serve.engine import Engine


@pytest.fixture(scope="module")
def built(tiny_export, tiny_beir, tmp_path_factory) -> Path:
    idx = tmp_path_factory.mktemp("idx") / "idx"
    Engine.build(tiny_export, tiny_beir / "corpus.jsonl", idx)
    return idx


@pytest.fixture
def idx(built, tmp_path) -> Path:
    dst = tmp_path / "idx"
    shutil.copytree(built, dst)
    return dst


@pytest.fixture
def engine(idx):
    eng = Engine.open(idx, writable=True)
    yield eng
    eng.close()
