"""Security properties of hce-serve: loopback by default, tokens for public writes, bounded requests,
no pickle anywhere, and request data never used as a filesystem path."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("hnswlib")

from click.testing import CliRunner  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from index_fixtures import built, engine, idx  # noqa: E402,F401 - shared fixtures

from hce_serve.cli import serve as cli  # noqa: E402 - the root group and the http command
from hce_serve.engine import Engine  # noqa: E402
from hce_serve.http import Limits, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok-3f9a"


@pytest.fixture
def served(monkeypatch):
    """Replace uvicorn.run: record the app and bind address instead of serving forever."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    monkeypatch.delenv("HCE_TOKEN", raising=False)
    return calls


# ---- binding and tokens ----------------------------------------------------------------------------------
def test_default_bind_is_loopback(idx, served):
    res = CliRunner().invoke(cli.main, ["http", "--index", str(idx)])
    assert res.exit_code == 0, res.output
    assert served[0]["host"] == "127.0.0.1"
    host_opt = next(p for p in cli.http.params if p.name == "host")
    assert host_opt.default == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_public_bind_without_token_refuses_to_start(idx, served, host):
    res = CliRunner().invoke(cli.main, ["http", "--index", str(idx), "--host", host])
    assert res.exit_code == 1 and "token" in res.output and "Traceback" not in res.output
    assert served == []  # never started


def test_public_bind_with_token_protects_writes(idx, served, monkeypatch):
    res = CliRunner().invoke(cli.main, ["http", "--index", str(idx), "--host", "0.0.0.0", "--token", TOKEN])
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("HCE_TOKEN", TOKEN)  # the environment works as well as --token
    res = CliRunner().invoke(cli.main, ["http", "--index", str(idx), "--host", "0.0.0.0"])
    assert res.exit_code == 0, res.output
    assert [c["host"] for c in served] == ["0.0.0.0", "0.0.0.0"]
    eng = Engine.open(idx, writable=True)  # the CLI closed its engine when "uvicorn" returned
    try:
        app = create_app(eng, token=TOKEN)
        with TestClient(app) as c:
            doc = {"documents": [{"_id": "x", "text": "protein"}]}
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN},
                            {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
                assert c.post("/documents", json=doc, headers=headers).status_code == 401
                assert c.delete("/documents/protein-0", headers=headers).status_code == 401
                assert c.post("/documents/delete", json={"ids": ["protein-1"]}, headers=headers).status_code == 401
            assert c.get("/healthz").json()["live"] == 64  # nothing changed
            assert c.post("/search", json={"query": "protein", "k": 3}).status_code == 200  # reads stay open
            assert c.post("/documents", json=doc, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        eng.close()


def test_public_read_only_needs_no_token(idx, served):
    res = CliRunner().invoke(cli.main, ["http", "--index", str(idx), "--host", "0.0.0.0", "--read-only"])
    assert res.exit_code == 0, res.output
    with TestClient(served[0]["app"]) as c:
        assert c.post("/documents/delete", json={"ids": ["protein-0"]}).status_code == 403


def test_real_server_listens_on_loopback_only(idx):
    """Start ``hce-serve http`` without --host and read the kernel's socket table."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp")
    import subprocess

    from benchmarks.harness.cli import tool_argv
    from benchmarks.loopback import free_port

    port = free_port()  # no --host: the default is what is tested
    proc = subprocess.Popen([*tool_argv("hce-serve"), "-q", "http", "--index", str(idx), "--port", str(port),
                             "--read-only"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import httpx

        for _ in range(600):
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                import time

                time.sleep(0.1)
        listening = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            if Path(table).exists():
                for line in Path(table).read_text().splitlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    addr, p = local.rsplit(":", 1)
                    if int(p, 16) == port and state == "0A":  # LISTEN
                        listening.add(addr)
        assert listening == {"0100007F"}  # 127.0.0.1 and nothing else
    finally:
        proc.kill()
        proc.communicate()


# ---- bounded requests ------------------------------------------------------------------------------------
def one_line_4xx(r, status: int | None = None) -> str:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    return detail


@pytest.mark.parametrize("k", [0, -1, 51, 10**12, 10**40, 1.5, "x", None, []])
def test_k_is_bounded(engine, k):
    with TestClient(create_app(engine, limits=Limits(max_k=50))) as c:
        one_line_4xx(c.post("/search", json={"query": "protein", "k": k}))
        if k is not None and not isinstance(k, list):
            one_line_4xx(c.get("/search", params={"q": "protein", "k": str(k)}))
        assert len(c.post("/search", json={"query": "protein", "k": 50}).json()["hits"]) == 50


def test_batches_and_query_length_are_bounded(engine):
    with TestClient(create_app(engine, limits=Limits(max_batch=4, max_query_chars=100))) as c:
        assert "limit" in one_line_4xx(c.post("/search", json={"queries": ["protein"] * 5}), 400)
        docs = [{"_id": f"n{i}", "text": "x"} for i in range(5)]
        assert "limit" in one_line_4xx(c.post("/documents", json={"documents": docs}), 400)
        assert "limit" in one_line_4xx(c.post("/documents/delete", json={"ids": [f"n{i}" for i in range(5)]}), 400)
        assert "limit" in one_line_4xx(c.post("/search", json={"query": "p" * 101}), 400)
        assert c.get("/healthz").json()["live"] == 64


def test_body_size_is_bounded_even_without_content_length(engine):
    with TestClient(create_app(engine, limits=Limits(max_body_bytes=4096))) as c:
        big = b'{"query": "' + b"a" * 8192 + b'"}'
        one_line_4xx(c.post("/search", content=big, headers={"content-type": "application/json"}), 413)

        def chunks():  # streamed: no Content-Length header, the limit must hold while reading
            yield b'{"documents": [{"_id": "big", "text": "'
            for _ in range(16):
                yield b"b" * 1024
            yield b'"}]}'

        # Refused while streaming, before any handler parses it.
        one_line_4xx(c.post("/documents", content=chunks(), headers={"content-type": "application/json"}), 413)
        assert "big" not in engine.ids()
        one_line_4xx(c.post("/search", content=b"{}",
                            headers={"content-length": "-5", "content-type": "application/json"}))

        def small():  # chunked but within the limit: replayed to the handler intact
            yield b'{"query": "protein '
            yield b'binding", "k": 2}'

        assert len(c.post("/search", content=small(), headers={"content-type": "application/json"}).json()["hits"]) == 2


def test_default_limits_are_finite():
    lim = Limits()
    assert 0 < lim.max_k <= 10_000 and 0 < lim.max_batch <= 10_000 and 0 < lim.max_body_bytes <= 64 * 2**20
    opts = {p.name: p for p in cli.http.params}
    assert opts["max_k"].default <= 10_000 and opts["max_body_mb"].default <= 64


# ---- request data never becomes a path -------------------------------------------------------------------
_AUDIT: dict = {"on": False, "hits": [], "hooked": False}
MARK = "zzpathmarkzz"


def _audit(event: str, args: tuple) -> None:
    if not _AUDIT["on"]:
        return
    for a in args:
        if isinstance(a, (str, bytes, os.PathLike)):
            try:
                text = os.fsdecode(a)
            except (TypeError, ValueError):
                continue
            if MARK in text:
                _AUDIT["hits"].append((event, text))


def test_paths_from_requests_never_reach_the_filesystem(engine, tmp_path):
    """Every file-touching event (open, listdir, remove, rename, mkdir ...) is audited while hostile ids,
    queries and URLs are served: none may carry the request's text."""
    if not _AUDIT["hooked"]:  # audit hooks cannot be removed: install once, switch with "on"
        sys.addaudithook(_audit)
        _AUDIT["hooked"] = True
    hostile = [f"../../{MARK}", f"/tmp/{MARK}", f"..\\..\\{MARK}", f"{MARK}/../../etc/passwd", f"~/{MARK}"]
    probe = tmp_path / f"probe-{MARK}"
    _AUDIT.update(on=True, hits=[])
    probe.write_text("x")  # self-check: the hook does see a path carrying the marker
    probe.unlink()
    _AUDIT["on"] = False
    assert {e for e, _ in _AUDIT["hits"]} >= {"open", "os.remove"}
    with TestClient(create_app(engine)) as c:
        _AUDIT.update(on=True, hits=[])
        try:
            for h in hostile:
                assert c.get("/search", params={"q": h, "k": 3}).status_code == 200
                assert c.post("/documents", json={"documents": [{"_id": h, "text": "protein " + h}]}).status_code == 200
                assert h in engine.ids()
                assert c.post("/documents/delete", json={"ids": [h]}).json()["deleted"] == [h]
            for path in (f"/documents/..%2F..%2F{MARK}", f"/documents/{MARK}%00", f"/{MARK}/../../etc/passwd",
                         f"/static/../{MARK}"):
                assert c.request("DELETE" if path.startswith("/documents") else "GET", path).status_code in (404, 405)
        finally:
            _AUDIT["on"] = False
    assert _AUDIT["hits"] == []
    assert not [p for p in tmp_path.parent.rglob(f"*{MARK}*")]


# ---- no pickle -------------------------------------------------------------------------------------------
PKL = "pick" + "le"
BANNED = [re.compile(p) for p in (rf"^\s*(import|from)\s+(c?{PKL}|dill|cloudpickle)\b", rf"\b{PKL}\.(loads?|dumps?)\(",
                                  r"allow_" + PKL + r"\s*=\s*True", r"joblib\.load\(")]


def _sources() -> list[Path]:
    dirs = ["hce_serve", "hce_train", "hce_export", "benchmarks", "scripts", "demo", "tests"]
    return [p for d in dirs for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts]


def test_no_pickle_anywhere():
    bad = []
    for p in _sources():
        text = p.read_text(encoding="utf-8")
        for i, line in enumerate(text.splitlines(), 1):
            if any(rx.search(line) for rx in BANNED):
                bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.end() : m.end() + 300].split("\n\n")[0]
            if "weights_only=True" not in call:
                bad.append(f"{p.relative_to(ROOT)}: torch.load without weights_only=True")
        if p.parts[-2] in ("hce_serve", "hce_train", "hce_export"):  # package code says it explicitly
            for m in re.finditer(r"\bnp\.load\(", text):
                if "allow_" + PKL + "=False" not in text[m.end() : m.end() + 200]:
                    bad.append(f"{p.relative_to(ROOT)}: np.load without allow_{PKL}=False")
    assert len(_sources()) > 20
    assert bad == []
