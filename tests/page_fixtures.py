"""An index for the search page's tests: the tiny corpus with metadata to filter on, a document whose title
and text carry markup that must stay text, and an id the document URL cannot carry. Import ``page_index``
(and ``page_corpus`` where the documents themselves are needed) into a test module to use them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

XSS_ID = "xss-1"
XSS_TITLE = "<script>window.__xss=1</script> protein fold"
XSS_TEXT = 'protein enzyme binding <img src=x onerror="window.__xss=2"> receptor kinase'
SLASH_ID = "odd/id 1"  # GET /documents/{id} cannot carry a "/": the page falls back to the hit's own fields


def page_documents(tiny_beir: Path) -> list[dict]:
    docs = [json.loads(line) for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    for i, d in enumerate(docs):
        d["metadata"] = {"topic": d["title"].split()[0], "year": 2019 + i % 3, "lang": "de" if i % 4 == 0 else "en"}
    docs.append({"_id": XSS_ID, "title": XSS_TITLE, "text": XSS_TEXT, "metadata": {"topic": "protein", "year": 2021,
                                                                                    "lang": "en"}})
    docs.append({"_id": SLASH_ID, "title": "soil crop rotation", "text": "soil crop plant nitrogen farm yield",
                 "metadata": {"topic": "soil", "year": 2020, "lang": "en"}})
    return docs


@pytest.fixture(scope="module")
def page_corpus(tiny_beir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page") / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in page_documents(tiny_beir)))
    return path


@pytest.fixture(scope="module")
def page_index(tiny_export, page_corpus, tmp_path_factory) -> Path:
    """An index folder (dense + lexical, documents stored) of ``page_corpus``."""
    from hce_serve.engine import Engine

    idx = tmp_path_factory.mktemp("page-idx") / "idx"
    Engine.build(tiny_export, page_corpus, idx)
    return idx
