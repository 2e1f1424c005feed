"""The search page's server side through FastAPI's TestClient: the files it ships and their security headers,
``GET /facets`` (bounded, typed values that work as filters) and ``GET /search/options``, on an index folder, a
folder without a lexical part or stored documents, and a Milvus collection. tests/test_browser.py drives the
page itself in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("hnswlib")

from fastapi.testclient import TestClient  # noqa: E402
from page_fixtures import XSS_ID, page_corpus, page_documents, page_index  # noqa: E402,F401 - shared fixtures

from hce_serve import facets  # noqa: E402
from hce_serve.engine import Engine  # noqa: E402
from hce_serve.http import create_app  # noqa: E402
from hce_serve.http.page import CSP, TYPES, load_assets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "page-test-write-token"


@pytest.fixture(scope="module")
def served(page_index):
    with Engine.open(page_index) as eng, TestClient(create_app(eng, token=TOKEN)) as c:
        yield c


def test_the_page_and_its_files_carry_a_strict_policy(served):
    r = served.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert csp == CSP and "script-src 'self'" in csp and "unsafe" not in csp and "default-src 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff" and "frame-ancestors 'none'" in csp
    for name, media in TYPES.items():
        if name == "index.html":
            continue
        a = served.get(f"/static/{name}")
        assert a.status_code == 200 and a.headers["content-type"] == media
        assert a.headers["content-security-policy"] == CSP
        again = served.get(f"/static/{name}", headers={"If-None-Match": a.headers["etag"]})
        assert again.status_code == 304 and not again.content
    for bad in ("/static/nope.js", "/static/index.html", "/static/..%2Fapp.py", "/static/%2E%2E/page.py"):
        assert served.get(bad).status_code == 404, bad
    assert served.get("/index.html", follow_redirects=False).headers["location"] == "/"
    # the API keeps no policy: Swagger UI at /docs loads its own scripts
    assert "content-security-policy" not in served.get("/docs").headers
    assert "content-security-policy" not in served.get("/stats").headers


def test_the_page_has_no_inline_script_no_foreign_origin_and_no_token(served):
    html = served.get("/").text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html)  # no inline event handler either (the policy would block it)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    js = served.get("/static/app.js").text
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js
    assert not re.search(r"https?://", js)
    # the only request that is not a GET is the search itself
    assert re.findall(r'method:\s*"([A-Z]+)"', js) == ["POST"] and 'getJSON("/search", {\n        method: "POST"' in js
    for path in ["/", *(f"/static/{n}" for n in TYPES if n != "index.html")]:
        assert TOKEN not in served.get(path).text and "Authorization" not in served.get(path).text


def test_facets_list_typed_values_that_work_as_filters(served, tiny_beir):
    docs = page_documents(tiny_beir)
    want = {k: Counter() for k in ("lang", "topic", "year")}
    for d in docs:
        for k, v in d["metadata"].items():
            want[k][v] += 1
    got = served.get("/facets").json()
    assert got["more"] is False and got["sampled"] is False and got["count_cap"] == facets.COUNT_CAP
    assert [f["key"] for f in got["fields"]] == ["lang", "topic", "year"]
    by_key = {f["key"]: f for f in got["fields"]}
    assert by_key["year"]["values"] == [{"value": y, "count": want["year"][y], "exact": True}
                                        for y in (2019, 2020, 2021)]
    assert {v["value"]: v["count"] for v in by_key["topic"]["values"]} == dict(want["topic"])
    assert not any(f["more"] for f in got["fields"])
    # a value from the answer, sent back as it came (2021, a number), filters the search
    hits = served.post("/search",
                       json={"query": "protein", "k": 100, "filter": {"year": 2021, "lang": "en"}}).json()["hits"]
    assert len(hits) == sum(1 for d in docs if d["metadata"]["year"] == 2021 and d["metadata"]["lang"] == "en")
    assert XSS_ID in {h["id"] for h in hits}


def test_facets_are_bounded(served, monkeypatch):
    one = served.get("/facets", params={"keys": 1, "values": 2}).json()
    assert one["more"] is True and [f["key"] for f in one["fields"]] == ["lang"]
    assert [v["value"] for v in one["fields"][0]["values"]] == ["de", "en"] and one["fields"][0]["more"] is False
    two = served.get("/facets", params={"keys": 3, "values": 2}).json()
    assert [f["more"] for f in two["fields"]] == [False, True, True]  # 8 topics, 3 years
    for bad in ({"keys": 0}, {"values": 0}, {"keys": facets.MAX_KEYS + 1}, {"values": facets.MAX_VALUES + 1}):
        r = served.get("/facets", params=bad)
        assert r.status_code == 422 and r.json()["detail"].startswith("query.")
    monkeypatch.setattr(facets, "COUNT_CAP", 5)
    capped = served.get("/facets", params={"keys": 1}).json()["fields"][0]["values"]
    assert all(v["count"] == 5 and v["exact"] is False for v in capped)


def test_facets_leave_out_values_too_long_to_be_choices(tiny_export, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "x", "metadata": {"k": "short", "long": "%s"}}\n' % ("y" * 300))
    Engine.build(tiny_export, corpus, tmp_path / "idx")
    with Engine.open(tmp_path / "idx") as eng, TestClient(create_app(eng)) as c:
        got = {f["key"]: f for f in c.get("/facets").json()["fields"]}
    assert got["k"]["values"] == [{"value": "short", "count": 1, "exact": True}]
    assert got["long"]["values"] == [] and got["long"]["more"] is True


def test_search_options_follow_the_index(served, page_corpus, tiny_export, tmp_path):
    opts = served.get("/search/options").json()
    assert opts["modes"] == ["dense", "lexical", "hybrid"] and opts["defaults"]["mode"] in opts["modes"]
    assert opts["max_k"] == 1000 and opts["stores_documents"] is True and "rrf" in opts["fusions"]
    Engine.build(tiny_export, page_corpus, tmp_path / "dense", lexical=False, store_documents=False)
    with Engine.open(tmp_path / "dense") as eng, TestClient(create_app(eng)) as c:
        opts = c.get("/search/options").json()
        assert opts["modes"] == ["dense"] and opts["defaults"]["mode"] == "dense" and opts["stores_documents"] is False
        assert c.get("/stats").json()["lexical"] is None
        assert c.get("/facets").json() == {"fields": [], "more": False, "sampled": False, "documents_read": 0,
                                           "count_cap": facets.COUNT_CAP}
        assert c.get("/").status_code == 200


def test_a_milvus_collection_serves_the_page_with_sampled_facets(page_index, tiny_export, tmp_path, monkeypatch):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from click.testing import CliRunner

    from hce_serve.cli import main

    db = tmp_path / "page.db"
    res = CliRunner().invoke(main, ["index", "export-milvus", "--index", str(page_index), "--uri", str(db),
                                    "--collection", "docs"])
    assert res.exit_code == 0, res.output
    with Engine.open(page_index) as local, Engine.open_milvus(str(db), "docs", tiny_export) as remote, \
            TestClient(create_app(local)) as a, TestClient(create_app(remote)) as b:
        assert b.get("/").status_code == 200 and b.get("/").headers["content-security-policy"] == CSP
        # lexical and hybrid where the collection carries a lexical side (exported from a folder that has one)
        lexical = getattr(remote.store, "lexical", None) is not None
        assert b.get("/search/options").json()["modes"] == (["dense", "lexical", "hybrid"] if lexical else ["dense"])
        want, got = a.get("/facets").json(), b.get("/facets").json()
        assert got["sampled"] is False and got["documents_read"] == len(remote)  # the whole collection fits the sample
        assert got["fields"] == want["fields"]
        monkeypatch.setattr(facets, "MILVUS_SAMPLE", 10)
        few = b.get("/facets").json()
        assert few["sampled"] is True and few["documents_read"] == 10
        assert sum(v["count"] for v in {f["key"]: f for f in few["fields"]}["lang"]["values"]) == 10


def test_the_wheel_ships_the_page(tmp_path):
    """The files are package data: a wheel built from this tree carries them, and an install of it finds them."""
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info into the tree it builds
    for part in ("hce_serve", "hce_train", "hce_export"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheel = next((tmp_path / "dist").glob("hce-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"hce_serve/http/static/{n}" for n in TYPES} <= names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # a wheel is installed by unpacking it
    found = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "import hce_serve.http.page as p; print(p.__file__); print(sorted(p.load_assets()))",
                            str(target)], capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    where, assets = found.stdout.splitlines()
    assert where.startswith(str(target)) and assets == str(sorted(TYPES))
    assert sorted(load_assets()) == sorted(TYPES)


def test_field_values_from_python_are_the_backends_and_bounded(page_index):
    """``Engine.field_values`` is what /facets serves (each backend answers it), with the same bounds."""
    from hce_serve.errors import DataError

    with Engine.open(page_index) as eng:
        got = eng.field_values(keys=1, values=1)
        assert len(got["fields"]) == 1 and len(got["fields"][0]["values"]) == 1 and got["more"] is True
        for bad in ({"keys": 0}, {"values": facets.MAX_VALUES + 1}, {"keys": True}, {"values": "5"}):
            with pytest.raises(DataError):
                eng.field_values(**bad)
