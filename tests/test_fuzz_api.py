"""Malformed requests and command lines (tests/reliability/fuzz_api.py, strict mode): never a 5xx, never a traceback.

HTTP: schemathesis cases (valid and invalid) for every operation of the app's OpenAPI document, in process.
CLI: random ``hce-serve`` argv with garbage files and values: exit 0/1/2, no traceback, exit 1 = one Error line.
Queries: unicode, FTS-like syntax, stop words only and very long texts in the dense, lexical and hybrid modes:
200 with well-formed hits or a one-line 4xx, and a lexical answer blind to syntax characters.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

pytest.importorskip("hnswlib")
pytest.importorskip("fastapi")

from reliability import fuzz_api  # noqa: E402


@pytest.fixture(scope="module")
def sample_root(tiny_export, tmp_path_factory):
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def samples(tiny_export, sample_root):
    eng, paths = fuzz_api.api_samples(sample_root, tiny_export)
    yield eng, paths
    eng.close()


@pytest.fixture(scope="module")
def reader(samples, sample_root):
    eng = fuzz_api.query_engine(sample_root)
    assert eng.stats()["lexical"] is not None  # the sample index has its lexical part
    yield eng
    eng.close()


def test_schemathesis_every_operation_no_5xx(samples):
    pytest.importorskip("schemathesis")
    from hce_serve.http import create_app

    eng, _ = samples
    tally, problems = Counter(), []
    fuzz_api.http_fuzz(create_app(eng), 6, True, tally, problems)
    assert problems == [] and tally["traceback"] == 0
    assert tally["cases"] >= 50  # every operation, valid and (where one exists) invalid requests
    assert tally["status_4xx"] > 0 and tally["status_2xx"] > 0


def test_random_command_lines_exit_cleanly(samples):
    _, paths = samples
    tally, problems = Counter(), []
    fuzz_api.cli_fuzz(paths, 40, True, tally, problems)
    assert problems == [] and tally["cases"] >= 30
    assert tally["exit_2"] > 0 and tally["exit_1"] + tally["exit_0"] > 0


def test_search_queries_in_every_mode_never_5xx(reader):
    """Arbitrary unicode, lone surrogates, FTS-like syntax ("a OR b", quotes, NEAR(), *, -, ^, column:term),
    stop words only and very long queries, dense / lexical / hybrid, POST and GET."""
    pytest.importorskip("hypothesis")
    from hce_serve.http import create_app

    tally, problems = Counter(), []
    fuzz_api.query_fuzz(create_app(reader), set(reader.ids()), 150, True, tally, problems)
    assert problems == [] and tally["traceback"] == 0 and tally["cases"] >= 150
    assert tally["status_2xx"] > 0 and tally["status_4xx"] > 0 and tally["hits"] > 0
    assert tally["syntax_checks"] > 0  # lexical answers compared with the same words without syntax


@pytest.mark.parametrize("query,finds", [
    ("protein OR enzyme", True), ('"climate carbon"', True), ("NEAR(tumor insulin, 2)", True), ("vacc*", False),
    ("-neuron glacier", True), ("title:protein^3", True), ("'; DROP TABLE docs; --", False), ("the of and", False),
    ("\x00*:", False), ("protein " * 2500, True), ("x" * 20_001, None)])
@pytest.mark.parametrize("mode", ["lexical", "hybrid"])
def test_query_syntax_is_plain_text(reader, query, finds, mode):
    """Each kind by name: 200, and a lexical answer that is the one for the words alone (so a prefix star
    matches nothing, a minus excludes nothing, and the SQL finds nothing); over the 20,000-character limit a
    one-line 400."""
    from fastapi.testclient import TestClient

    from hce_serve.http import create_app

    with TestClient(create_app(reader), raise_server_exceptions=False) as client:
        r = client.post("/search", json={"query": query, "mode": mode, "k": 20})
        if finds is None:
            assert r.status_code == 400 and "limit" in r.json()["detail"]
            return
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert fuzz_api._check_hits(r.json(), 20, set(reader.ids())) is None
        if mode == "lexical":
            plain = client.post("/search", json={"query": re.sub(r"\W+", " ", query), "mode": mode, "k": 20})
            if re.search(r"\w", query):
                assert plain.json()["hits"] == hits
            else:  # no words: a blank query is refused, and the lexical side found nothing
                assert plain.status_code == 400 and hits == []
            assert bool(hits) == finds
        else:
            assert hits  # the dense side answers whatever the text


def test_one_line_4xx_checker():
    assert fuzz_api._one_line_4xx(200, b"{}") is None
    assert fuzz_api._one_line_4xx(404, b'{"detail": "no such document"}') is None
    assert fuzz_api._one_line_4xx(500, b"Internal Server Error")
    assert fuzz_api._one_line_4xx(400, b"plain text")
    assert fuzz_api._one_line_4xx(422, b'{"detail": [{"loc": ["body"]}]}')
