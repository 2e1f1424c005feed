"""HTTP API through FastAPI's TestClient: search, documents, filters, writes, limits, token, 4xx for the
client's errors and 5xx for the server's, durability."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("hnswlib")

from fastapi.testclient import TestClient  # noqa: E402
from index_fixtures import built, engine, idx  # noqa: E402,F401 - shared fixtures

from hce_serve.engine import Engine  # noqa: E402
from hce_serve.folder.store import IndexStore  # noqa: E402
from hce_serve.http import Limits, create_app, is_loopback  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def client(engine, token=None, **limits) -> TestClient:
    return TestClient(create_app(engine, token=token, limits=Limits(**limits)))


def test_health_stats_search(engine):
    with client(engine) as c:
        assert c.get("/healthz").json() == {"status": "ok", "live": 64}
        st = c.get("/stats").json()
        assert st["live"] == 64 and st["encoder"]["dim"] == 32 and st["stores_documents"]
        assert str(engine.store.folder) not in c.get("/stats").text  # no filesystem path for clients
        one = c.post("/search", json={"query": "protein enzyme", "k": 3}).json()
        assert len(one["hits"]) == 3 and set(one["hits"][0]) == {"id", "score", "title", "text", "metadata"}
        assert c.get("/search", params={"q": "protein enzyme", "k": 3}).json() == one
        lean = c.get("/search", params={"q": "protein enzyme", "k": 3, "fields": "title"}).json()
        assert [set(h) for h in lean["hits"]] == [{"id", "score", "title"}] * 3
        assert [h["id"] for h in lean["hits"]] == [h["id"] for h in one["hits"]]
        batch = c.post("/search", json={"queries": ["protein enzyme", "climate ice"], "k": 2}).json()
        ids = [h["id"] for h in batch["results"][0]["hits"]]
        assert len(batch["results"]) == 2 and ids == [h["id"] for h in one["hits"][:2]]
        big = c.post("/search", json={"query": "protein", "k": 500}).json()
        assert len(big["hits"]) == 64  # k above the live count is clamped
        assert "/search" in c.get("/openapi.json").json()["paths"]


def test_add_replace_delete_are_durable(engine, idx):
    with client(engine) as c:
        r = c.post("/documents", json={"documents": [{"_id": "n1", "title": "t", "text": "glacier ice",
                                                      "metadata": {"lang": "en", "year": 2021}},
                                                     {"_id": "soil-1", "text": "market bank"}]})
        assert r.status_code == 200 and r.json() == {"added": 1, "replaced": 1, "empty": 0, "live": 65}
        hits = c.post("/search", json={"query": "t glacier ice", "k": 1}).json()["hits"]
        assert hits[0]["id"] == "n1" and hits[0]["metadata"] == {"lang": "en", "year": 2021}
        assert c.get("/documents/n1").json() == {"_id": "n1", "title": "t", "text": "glacier ice",
                                                 "metadata": {"lang": "en", "year": 2021}}
        assert c.get("/documents/soil-1").json()["text"] == "market bank"
        only = c.post("/search", json={"query": "protein", "k": 10, "filter": {"year": [2020, 2021]}}).json()["hits"]
        assert [h["id"] for h in only] == ["n1"]  # the filter runs inside the search: the one match, not 0 of 10
        assert c.delete("/documents/n1").json()["deleted"] == ["n1"]
        r = c.delete("/documents/n1")
        assert r.status_code == 404 and "n1" in r.json()["detail"]
        assert c.get("/documents/n1").status_code == 404
        r = c.post("/documents/delete", json={"ids": ["soil-2", "ghost"]}).json()
        assert r["deleted"] == ["soil-2"] and r["missing"] == ["ghost"]
        all_ids = {h["id"] for h in c.post("/search", json={"query": "x y", "k": 100}).json()["hits"]}
        assert not {"n1", "soil-2"} & all_ids and len(all_ids) == 63
        # acknowledged writes are in the log before any snapshot: a reader sees them
        with IndexStore.open(idx) as r:
            assert r.pending == 3 and "n1" not in r.index and "soil-1" in r.index and len(r.index) == 63
    # shutting the app down folds the log into a snapshot
    with IndexStore.open(idx) as r:
        assert r.pending == 0 and r.manifest.generation == 2


@pytest.mark.parametrize(
    "method,path,body,status,needle",
    [
        ("post", "/search", {"query": "  ", "k": 3}, 400, "empty"),
        ("post", "/search", {"query": "x", "k": 0}, 400, "k must"),
        ("post", "/search", {"query": "x", "k": 51}, 400, "k must"),
        ("post", "/search", {"query": "x", "queries": ["y"]}, 400, "exactly one"),
        ("post", "/search", {"queries": ["a"] * 9}, 400, "limit"),
        ("post", "/search", {"queries": []}, 400, "no queries"),
        ("post", "/search", {"k": "ten", "query": "x"}, 422, "k"),
        ("post", "/search", {"query": "x" * 5000}, 400, "characters"),
        ("get", "/search", None, 422, "q"),
        ("post", "/documents", {"documents": [{"_id": "a", "text": "x"}, {"_id": "a", "text": "y"}]}, 400,
         "more than once"),
        ("post", "/documents", {"documents": [{"_id": "a\nb", "text": "x"}]}, 400, "line break"),
        ("post", "/documents", {"documents": [{"text": "x"}]}, 422, "_id"),
        ("post", "/documents/delete", {"ids": []}, 400, "no ids"),
        ("post", "/search", {"query": "x", "ef": 0}, 400, "ef must"),
        ("post", "/search", {"query": "x", "fields": ["body"]}, 400, "unknown field"),
        ("post", "/search", {"query": "x", "filter": {}}, 400, "filter"),
        ("post", "/search", {"query": "x", "filter": {"a": []}}, 400, "filter 'a'"),
        ("post", "/search", {"query": "x", "filter": {"a": {"b": 1}}}, 422, "filter"),
        ("post", "/search", {"query": "x", "subtree": 3}, 400, "no corpus tree"),
        ("post", "/documents", {"documents": [{"_id": "a", "text": "x", "metadata": {"m": {"n": 1}}}]}, 422,
         "metadata"),
        ("get", "/documents/ghost", None, 404, "not in the index"),
        ("post", "/documents", {"documents": [{"_id": "a", "text": "\ud800"}]}, 400, "valid Unicode"),
        ("post", "/search", {"query": "x", "filter": {"a": "\udc00"}}, 400, "filter 'a'"),
    ],
)
def test_bad_requests_are_4xx_json(engine, method, path, body, status, needle):
    with client(engine, max_k=50, max_batch=8, max_query_chars=4000) as c:
        # json.dumps escapes lone surrogates ("\\ud800") the way a client's JSON would; httpx's json= cannot.
        r = c.request(method.upper(), path, content=None if body is None else json.dumps(body),
                      headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        detail = r.json()["detail"]
        assert isinstance(detail, str) and needle in detail and "\n" not in detail
        assert c.get("/healthz").json()["live"] == 64  # nothing stored was lost


def test_body_limit_and_non_json(engine):
    with client(engine, max_body_bytes=1000) as c:
        r = c.post("/documents", json={"documents": [{"_id": "big", "text": "x" * 2000}]})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        r = c.post("/search", content=b"\xff\xfe not json", headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and "detail" in r.json()


def test_token_required_for_writes_only(engine):
    with client(engine, token=TOKEN) as c:
        assert c.post("/search", json={"query": "protein", "k": 1}).status_code == 200
        r = c.post("/documents", json={"documents": [{"_id": "z", "text": "x"}]})
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]
        r = c.post("/documents/delete", json={"ids": ["protein-0"]}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert c.delete("/documents/protein-0").status_code == 401
        assert c.get("/healthz").json()["live"] == 64
        r = c.post("/documents", json={"documents": [{"_id": "z", "text": "x"}]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["added"] == 1


def test_read_only_server_refuses_writes(idx):
    eng = Engine.open(idx)  # no writer lock
    try:
        with client(eng) as c:
            r = c.post("/documents/delete", json={"ids": ["protein-0"]})
            assert r.status_code == 403 and "read-only" in r.json()["detail"]
            assert c.post("/search", json={"query": "protein", "k": 1}).status_code == 200
    finally:
        eng.close()


def test_server_threads_reach_every_requests_index_search(idx, monkeypatch):
    """`hce-serve http --threads 2` opens its engine with threads=2: each request's index search gets them too
    (an ivf-sq8 index splits a lone query's cells between them), not only the encoder."""
    eng = Engine.open(idx, threads=2)
    seen: list[int] = []
    search = eng.store.search

    def spy(*args, **kwargs):
        seen.append(kwargs["num_threads"])
        return search(*args, **kwargs)

    monkeypatch.setattr(eng.store, "search", spy)
    try:
        with client(eng) as c:
            assert c.post("/search", json={"query": "protein", "k": 3}).status_code == 200
            assert c.get("/search", params={"q": "protein", "k": 3}).status_code == 200
            assert c.post("/search", json={"queries": ["protein", "ice"], "k": 3}).status_code == 200
    finally:
        eng.close()
    assert seen == [2, 2, 2]
    with Engine.open(idx, threads=2, search_threads=1) as one:  # the two can differ
        assert one.options.index_threads == 1


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("example.com")


def test_empty_document_is_indexed_and_counted(engine):
    with client(engine) as c:
        r = c.post("/documents", json={"documents": [{"_id": "blank", "text": " "}]})
        assert r.status_code == 200 and r.json()["empty"] == 1 and r.json()["added"] == 1
        assert c.get("/documents/blank").json()["text"] == " "


def test_server_faults_are_5xx_not_4xx(engine, monkeypatch):
    """A broken graph or a failing disk is not the client's fault: 500 with a JSON detail, the index intact."""
    from hce_serve.errors import FormatError

    def broken(texts):
        raise FormatError("export: onnxruntime failed to run the graph (corrupt)")

    with client(engine) as c:
        monkeypatch.setattr(engine.encoder, "encode_queries", broken)
        r = c.post("/search", json={"query": "protein", "k": 3})
        assert r.status_code == 500 and "onnxruntime failed" in r.json()["detail"]
        monkeypatch.undo()
        assert c.post("/search", json={"query": "protein", "k": 3}).status_code == 200
    with TestClient(create_app(engine), raise_server_exceptions=False) as c:
        monkeypatch.setattr(engine.store.docs, "get_many", lambda ids: (_ for _ in ()).throw(OSError("I/O error")))
        r = c.get("/documents/protein-0")
        assert r.status_code == 500 and "I/O error" in r.json()["detail"]


def test_deleted_has_the_same_shape_as_the_cli(engine):
    with client(engine) as c:
        one = c.delete("/documents/protein-0").json()
        many = c.post("/documents/delete", json={"ids": ["protein-1", "ghost"]}).json()
    assert one == {"deleted": ["protein-0"], "missing": [], "live": 63}
    assert many == {"deleted": ["protein-1"], "missing": ["ghost"], "live": 62}
