"""Malformed requests and command lines (tests/reliability/fuzz_api.py, strict mode): never a 5xx, never a traceback.

HTTP: schemathesis cases (valid and invalid) for every operation of the app's OpenAPI document, in process.
CLI: random ``hce-serve`` argv with garbage files and values: exit 0/1/2, no traceback, exit 1 = one Error line.
"""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("hnswlib")
pytest.importorskip("fastapi")

from reliability import fuzz_api  # noqa: E402


@pytest.fixture(scope="module")
def samples(tiny_export, tmp_path_factory):
    eng, paths = fuzz_api.api_samples(tmp_path_factory.mktemp("api"), tiny_export)
    yield eng, paths
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


def test_one_line_4xx_checker():
    assert fuzz_api._one_line_4xx(200, b"{}") is None
    assert fuzz_api._one_line_4xx(404, b'{"detail": "no such document"}') is None
    assert fuzz_api._one_line_4xx(500, b"Internal Server Error")
    assert fuzz_api._one_line_4xx(400, b"plain text")
    assert fuzz_api._one_line_4xx(422, b'{"detail": [{"loc": ["body"]}]}')
