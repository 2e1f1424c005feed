"""Micro-batching in ``hce-serve http`` (http/batcher.py), through a real uvicorn server on loopback: concurrent
requests share encoder calls yet each gets its own hits; a lone request never waits for the window; a wait of
0 turns batching off; ``--workers N`` serves reads and refuses writes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("orjson")
pytest.importorskip("hnswlib")

import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from index_fixtures import built, engine, idx  # noqa: E402,F401 - shared fixtures

from hce_serve.engine import Engine  # noqa: E402
from hce_serve.http import Batching, create_app  # noqa: E402
from hce_serve.http.workers import refusal  # noqa: E402

LABELLED = [{"_id": f"m-{i}", "title": f"protein {w}", "text": f"enzyme {w} climate ice {i}",
             "metadata": {"lang": "en" if i % 2 else "fr", "year": 2020 + i % 3}}
            for i, w in enumerate(["kinase", "glacier", "market", "soil", "bank", "cell", "ocean", "gene"])]
# Every knob a request can set, mixed: k, filter, mode (dense, lexical, hybrid with each fusion), ef, fields,
# explain, a batch request (several queries in one body), and requests that share all their settings.
REQUESTS = [
    {"query": "protein enzyme", "k": 3},
    {"query": "climate ice", "k": 7, "fields": ["title"]},
    {"query": "protein kinase", "k": 5, "filter": {"lang": "en"}},
    {"query": "enzyme glacier", "k": 4, "filter": {"year": [2020, 2021]}, "ef": 20},
    {"query": "market bank", "k": 2, "mode": "lexical"},
    {"query": "soil ocean", "k": 6, "mode": "hybrid", "fusion": "rrf", "explain": True},
    {"query": "gene cell protein", "k": 5, "mode": "hybrid", "fusion": "minmax", "alpha": 0.3, "depth": 20},
    {"query": "ice enzyme", "k": 3, "mode": "dense", "fields": [], "filter": {"lang": ["fr", "en"]}},
    {"queries": ["protein", "climate glacier ice", "bank market"], "k": 4},
    {"query": "kinase", "k": 1, "mode": "hybrid", "fusion": "dbsf", "filter": {"lang": "fr"}, "explain": True},
    {"query": "ocean warming soil", "k": 8},
    {"query": "protein enzyme kinase cell", "k": 2, "fields": ["metadata", "text"]},
    # the same settings as earlier ones: answered by one backend search together with them (searches.py)
    {"query": "ice ocean", "k": 3},
    {"query": "bank soil", "k": 4},
    {"query": "glacier", "k": 4, "mode": "dense", "fields": []},
]


class Server:
    """``create_app`` under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def slow_encoder(eng: Engine, seconds: float, sizes: list[int]) -> None:
    """Every encoder call records its query count and takes ``seconds`` longer, so that requests sent together
    are still arriving while a batch runs."""
    enc = eng.encoder
    inner = enc.encode_queries

    def encode_queries(texts):
        sizes.append(len(texts))
        time.sleep(seconds)
        return inner(texts)

    enc.encode_queries = encode_queries


def expected(eng: Engine, body: dict) -> dict:
    """The unbatched answer: Engine.search_batch on this request alone, in the JSON shape."""
    knobs = {k: body[k] for k in ("k", "filter", "ef", "fields", "mode", "fusion", "alpha", "depth", "explain")
             if k in body}
    texts = body.get("queries") or [body["query"]]
    rows = [[h.to_dict() for h in row] for row in eng.search_batch(texts, **knobs)]
    return {"hits": rows[0]} if "query" in body else {"results": [{"hits": r} for r in rows]}


def same(got: dict, want: dict) -> None:
    """Equal answers; scores to 1e-6 (a batched fp32 MatMul may sum in another order)."""
    got_rows = [r["hits"] for r in got["results"]] if "results" in want else [got["hits"]]
    want_rows = [r["hits"] for r in want["results"]] if "results" in want else [want["hits"]]
    assert len(got_rows) == len(want_rows)
    for g, w in zip(got_rows, want_rows, strict=True):
        assert [h["id"] for h in g] == [h["id"] for h in w]
        for gh, wh in zip(g, w, strict=True):
            assert gh["score"] == pytest.approx(wh["score"], abs=1e-6)
            assert {k: v for k, v in gh.items() if k not in ("score", "explain")} == \
                   {k: v for k, v in wh.items() if k not in ("score", "explain")}
            assert ("explain" in gh) == ("explain" in wh)


@pytest.fixture
def fp32_engine(idx):
    """fp32 queries: its encoder is row-independent, so a batched call returns each query's embedding as
    the call of that query alone does (int8's dynamic quantization scales a whole call's activations together,
    so there a query's embedding moves slightly with its batch: measured in benchmarks.http)."""
    eng = Engine.open(idx, writable=True, variant="fp32", query_cache=0)
    eng.add(LABELLED)
    yield eng
    eng.close(save=False)


def test_concurrent_mixed_requests_get_their_unbatched_hits(fp32_engine):
    sizes: list[int] = []
    want = [expected(fp32_engine, b) for b in REQUESTS]
    slow_encoder(fp32_engine, 0.3, sizes)
    app = create_app(fp32_engine, batching=Batching(max_wait_ms=50, max_queries=64, workers=1), save_on_shutdown=False)
    with Server(app) as srv, ThreadPoolExecutor(len(REQUESTS)) as pool:
        answers = list(pool.map(lambda b: srv.call("POST", "/search", b), REQUESTS))
        stats = srv.call("GET", "/stats")[1]["batching"]
    for (status, got), w in zip(answers, want, strict=True):
        assert status == 200
        same(got, w)
    # the requests did share encoder calls: fewer calls than requests, and one held several
    dense = [b for b in REQUESTS if b.get("mode") != "lexical"]
    assert stats["largest_batch"] > 1 and stats["batches"] < len(REQUESTS)
    assert len(sizes) < len(dense) and max(sizes) > 1
    assert sum(sizes) == sum(len(b.get("queries", [0])) for b in dense)


def test_a_request_that_fails_in_a_batch_fails_alone(fp32_engine, monkeypatch):
    """One request's error inside a batch (here its lexical side) is its own 400; its batch-mates get their
    hits. A request refused by the checks (subtree on an index without a tree) never reaches a batch."""
    from hce_serve.errors import DataError

    def broken(*a, **kw):
        raise DataError("the lexical part is unreadable")

    good = {"query": "protein enzyme", "k": 3, "mode": "dense"}  # the index's default is hybrid
    want = expected(fp32_engine, good)
    monkeypatch.setattr(fp32_engine.store, "search_lexical", broken)
    sizes: list[int] = []
    slow_encoder(fp32_engine, 0.3, sizes)
    bodies = [good, {"query": "protein", "k": 3, "mode": "lexical"}, {"query": "protein", "subtree": 2}] * 3
    app = create_app(fp32_engine, batching=Batching(max_wait_ms=50, workers=1), save_on_shutdown=False)
    with Server(app) as srv, ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: srv.call("POST", "/search", b), bodies))
        stats = srv.call("GET", "/stats")[1]["batching"]
    assert [s for s, _ in answers] == [200, 400, 400] * 3
    assert all("unreadable" in answers[i][1]["detail"] for i in (1, 4, 7))
    assert all("corpus tree" in answers[i][1]["detail"] for i in (2, 5, 8))
    for i in (0, 3, 6):
        same(answers[i][1], want)
    assert stats["requests"] == 6 and stats["largest_batch"] > 1  # the refused three never queued


def test_a_lone_request_does_not_wait_for_the_window(fp32_engine):
    sizes: list[int] = []
    slow_encoder(fp32_engine, 0.0, sizes)
    app = create_app(fp32_engine, batching=Batching(max_wait_ms=5000, workers=2), save_on_shutdown=False)
    with Server(app) as srv:
        srv.call("POST", "/search", {"query": "warm up", "k": 1})
        t = time.perf_counter()
        status, got = srv.call("POST", "/search", REQUESTS[0])
        took = time.perf_counter() - t
    assert status == 200 and took < 2.5, f"a lone request took {took:.2f} s with a 5 s window"
    same(got, expected(fp32_engine, REQUESTS[0]))


def test_the_window_holds_a_request_while_another_batch_runs(fp32_engine):
    """The other side of the rule: with a worker free but a batch running, a request waits (here until that
    batch ends, 0.6 s, well inside the 5 s window) so that later ones can share its call."""
    sizes: list[int] = []
    slow_encoder(fp32_engine, 0.6, sizes)
    app = create_app(fp32_engine, batching=Batching(max_wait_ms=5000, workers=2), save_on_shutdown=False)
    with Server(app) as srv, ThreadPoolExecutor(4) as pool:
        first = pool.submit(srv.call, "POST", "/search", {"query": "protein", "k": 1})
        time.sleep(0.15)
        later = [pool.submit(srv.call, "POST", "/search", {"query": q, "k": 2}) for q in ("ice", "bank", "soil")]
        assert first.result()[0] == 200 and all(f.result()[0] == 200 for f in later)
    assert sizes == [1, 3]  # the three later requests in one call, not one call each on the free worker


def test_max_batch_wait_zero_turns_batching_off(fp32_engine):
    sizes: list[int] = []
    slow_encoder(fp32_engine, 0.1, sizes)
    app = create_app(fp32_engine, batching=Batching(max_wait_ms=0, workers=1), save_on_shutdown=False)
    bodies = [{"query": f"protein {w}", "k": 2} for w in ("enzyme", "ice", "bank", "soil", "gene", "cell")]
    with Server(app) as srv, ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: srv.call("POST", "/search", b), bodies))
        stats = srv.call("GET", "/stats")[1]["batching"]
    assert all(s == 200 for s, _ in answers)
    assert sizes == [1] * len(bodies)
    assert stats["batches"] == len(bodies) and stats["largest_batch"] == 1
    for (_, got), b in zip(answers, bodies, strict=True):
        same(got, expected(fp32_engine, b))


def test_fast_lane_and_route_answer_alike(engine):
    """POST /search goes through the fast lane; a body it does not take (no JSON content type, a model error)
    goes on to the FastAPI route, and both answer the same."""
    with TestClient(create_app(engine)) as c:
        body = {"query": "protein enzyme", "k": 3, "fields": ["title"]}
        lane = c.post("/search", json=body)
        # a +json type is not the lane's: FastAPI's route parses it as JSON and answers
        route = c.post("/search", content=json.dumps(body), headers={"content-type": "application/vnd.api+json"})
        assert lane.status_code == route.status_code == 200
        assert lane.headers["content-type"] == route.headers["content-type"] == "application/json"
        assert lane.json() == route.json() and len(lane.json()["hits"]) == 3
        assert c.get("/search", params={"q": "protein enzyme", "k": 3, "fields": "title"}).json() == lane.json()
        bad = c.post("/search", json={"query": "x", "k": "ten"})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("body.k")


def test_reason_refuses_writes_on_a_writable_engine(engine):
    with TestClient(create_app(engine, read_only_reason=refusal(2))) as c:
        r = c.post("/documents", json={"documents": [{"_id": "z", "text": "x"}]})
        assert r.status_code == 403 and "writes need --workers 1" in r.json()["detail"]
        assert c.delete("/documents/protein-0").status_code == 403
        assert c.post("/search", json={"query": "protein", "k": 1}).status_code == 200
        assert c.get("/healthz").json()["live"] == 64


def test_workers_serve_reads_and_refuse_writes(idx, tmp_path):
    from benchmarks.loopback import free_port

    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "hce_serve.cli.serve", "-q", "http", "--index", str(idx),
                             "--port", str(port), "--workers", "2"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "no answer from --workers 2"
                time.sleep(0.2)
        srv = Server.__new__(Server)
        srv.port = port
        for _ in range(4):  # connections land on either process: each serves searches
            status, got = srv.call("POST", "/search", {"query": "protein enzyme", "k": 3})
            assert status == 200 and len(got["hits"]) == 3
        status, got = srv.call("POST", "/documents", {"documents": [{"_id": "z", "text": "x"}]})
        assert status == 403 and got["detail"] == refusal(2)
        assert srv.call("POST", "/documents/delete", {"ids": ["protein-0"]})[0] == 403
        assert srv.call("GET", "/healthz")[1]["live"] == 64
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_requests_with_the_same_settings_share_one_backend_search(fp32_engine, monkeypatch):
    """searches.run answers same-settings, unfiltered requests with one index call; each still gets its own
    hits, and a filtered one is searched alone."""
    bodies = [{"query": q, "k": 3, "mode": "dense"} for q in ("protein", "ice", "bank market", "soil")]
    bodies.append({"query": "protein", "k": 3, "mode": "dense", "filter": {"lang": "en"}})
    want = [expected(fp32_engine, b) for b in bodies]
    reqs = [fp32_engine.prepare_search([b["query"]], k=3, mode="dense", filter=b.get("filter")) for b in bodies]
    calls = []
    search = fp32_engine.store.search
    monkeypatch.setattr(fp32_engine.store, "search", lambda q, *a, **kw: calls.append(len(q)) or search(q, *a, **kw))
    got = fp32_engine.run_searches(reqs)
    assert sorted(calls) == [1, 4]  # the four alike in one call, the filtered one alone
    for rows, w, r in zip(got, want, reqs, strict=True):
        assert [d for d, *_ in rows[0]] == [h["id"] for h in w["hits"]]
        assert [s for _, s, *_ in rows[0]] == pytest.approx([h["score"] for h in w["hits"]], abs=1e-6)
        assert r.fields == ("title", "text", "metadata") and all(doc is not None for _, _, doc, _ in rows[0])


def test_worker_config_names_the_target(tmp_path):
    """What reaches each --workers process: a folder by its absolute path, a Milvus collection by its parts."""
    from hce_serve.cli.options import MilvusSpec
    from hce_serve.http.workers import _target_json
    from hce_serve.milvus.layout import MilvusTarget

    assert _target_json(tmp_path / "idx") == {"kind": "folder", "path": str((tmp_path / "idx").resolve())}
    spec = MilvusSpec(MilvusTarget("http://127.0.0.1:19530", "docs", "user:pw"), tmp_path / "export")
    assert _target_json(spec) == {"kind": "milvus", "uri": "http://127.0.0.1:19530", "collection": "docs",
                                  "token": "user:pw", "model": str((tmp_path / "export").resolve())}
