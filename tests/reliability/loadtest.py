"""Bounded concurrent load test of ``hce-serve http`` on loopback: searches mixed with adds and deletes.

Each search picks its mode (``"mode"`` in the body: dense, lexical or hybrid, weighted by ``--search-modes``;
a hybrid one also a fusion method, and now and then ``"explain"``), so the BM25 side's postings are read
while adds and deletes change them. The index is built with its lexical part (``index build``'s default).

``--concurrency`` keep-alive connections (the lean client of ``benchmarks.loopback``) keep requests in
flight until ``--requests`` were sent or ``--seconds`` passed (whichever first), against a server in its
own process on 127.0.0.1. It reports throughput, latency percentiles per request kind, status counts (5xx
must be 0), whether the server survived, and checks two invariants:

    on every search answer and every ``GET /documents/{id}``: a document whose delete was acknowledged
    before the request was sent, and whose re-add was not sent before it was answered, is not returned;

    on every ``GET /documents/{id}`` answered 404: the document's latest add was not acknowledged before
    the request was sent, or a delete of it was sent since (an acknowledged document does not vanish).

No two writes for the same id are ever in flight together, so "acknowledged deleted" is well defined.
Searches and gets aim at recently deleted documents (for searches, their own text as the query) so a
leak would show.

    python -m tests.reliability.loadtest --export EXPORT_DIR --corpus corpus.jsonl --queries queries.jsonl \
        --seconds 60 [--search-modes hybrid=2,dense=1,lexical=1]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from benchmarks.harness import cli, provenance, timing
from benchmarks.loopback import Connection, start_server
from hce_serve import defaults
from hce_serve.lexical.fusion import FUSIONS

MIX = {"search": 0.7, "get": 0.1, "add": 0.1, "delete": 0.1}
SEARCH_MODES = {"hybrid": 0.5, "dense": 0.25, "lexical": 0.25}  # mostly hybrid: the mode that reads both sides


class Invariant:
    """Client-side record of acknowledged writes, and the check of every search answer against it."""

    def __init__(self, live: dict[str, str]) -> None:
        self.text = dict(live)  # every id ever added -> its text
        self.live = set(live)
        self.busy: set[str] = set()
        self.deleted_at: dict[str, float] = {}  # id -> when its delete was acknowledged
        self.add_sent_at: dict[str, float] = {}  # id -> when its latest add was sent
        start = time.monotonic()
        self.add_acked_at: dict[str, float] = dict.fromkeys(live, start)  # id -> when its latest add was acknowledged
        self.delete_sent_at: dict[str, float] = {}  # id -> when its latest delete was sent
        self.recent_deleted: list[str] = []
        self.violations: list[str] = []
        self.checked_hits = self.checked_gets = 0

    def deleted_before(self, doc_id: str, sent: float) -> float | None:
        """When ``doc_id``'s delete was acknowledged, if that was before ``sent`` and no re-add was sent since."""
        gone = self.deleted_at.get(doc_id)
        return gone if gone is not None and gone < sent and self.add_sent_at.get(doc_id, -1.0) < gone else None

    def check(self, hits: list[dict[str, Any]], sent: float, mode: str = "") -> int:
        """Check one search answer; returns how many violations it added (``mode``: named in them)."""
        before = len(self.violations)
        where = f"{mode} search: " if mode else ""
        for h in hits:
            d = h["id"]
            self.checked_hits += 1
            if d not in self.text:
                self.violations.append(f"{where}unknown id {d!r} returned")
                continue
            if (gone := self.deleted_before(d, sent)) is not None:
                self.violations.append(f"{where}{d!r} returned {time.monotonic() - gone:.3f} s after its delete "
                                       "was acknowledged")
        return len(self.violations) - before

    def check_get(self, doc_id: str, code: int, body: dict[str, Any] | None, sent: float) -> None:
        """``GET /documents/{doc_id}`` sent at ``sent`` was answered ``code`` (``body``: the 200 answer)."""
        self.checked_gets += 1
        if code == 200:
            if body is None or body.get("_id") != doc_id:
                self.violations.append(f"GET /documents/{doc_id} answered another document: {str(body)[:100]}")
            elif (gone := self.deleted_before(doc_id, sent)) is not None:
                self.violations.append(f"GET /documents/{doc_id} returned it {time.monotonic() - gone:.3f} s after "
                                       "its delete was acknowledged")
        elif code == 404:
            acked = self.add_acked_at.get(doc_id)
            if acked is not None and acked < sent and self.delete_sent_at.get(doc_id, -1.0) < acked:
                self.violations.append(f"GET /documents/{doc_id} answered 404 though its add was acknowledged "
                                       f"{time.monotonic() - acked:.3f} s before and no delete was sent since")


class Load:
    """The shared state of one run: the invariant, the request budget, latencies and status counts."""

    def __init__(self, live: dict[str, str], queries: list[str], requests: int, seconds: float,
                 k_choices: tuple[int, ...], search_modes: dict[str, float] | None = None) -> None:
        self.inv = Invariant(live)
        self.queries, self.pool, self.k_choices = queries, list(live.values()), k_choices
        self.search_modes = dict(search_modes or SEARCH_MODES)
        self.left, self.deadline, self.fresh = requests, time.monotonic() + seconds, 0
        self.lat: dict[str, list[float]] = {k: [] for k in MIX}
        self.status: Counter = Counter()
        self.mode_lat: dict[str, list[float]] = {m: [] for m in self.search_modes}
        # requests, status_N, hits, violations
        self.by_mode: dict[str, Counter] = {m: Counter() for m in self.search_modes}

    def pick(self, rng: random.Random) -> tuple[str, list[str]]:
        """The next request's kind and the id it writes (none for a search)."""
        inv = self.inv
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if kind == "get":  # no writer's busy check: the invariant is about when writes were sent and acknowledged
            dead = inv.recent_deleted[-20:]
            pool = dead if dead and rng.random() < 0.5 else sorted(inv.live)
            return ("get", [rng.choice(pool)]) if pool else ("search", [])
        if kind == "delete":
            cand = [d for d in rng.sample(sorted(inv.live), min(8, len(inv.live))) if d not in inv.busy]
            return ("delete", cand[:1]) if cand else ("search", [])
        if kind == "add":
            dead = [d for d in inv.recent_deleted[-50:] if d not in inv.busy and d not in inv.live]
            if dead and rng.random() < 0.5:
                return "add", [rng.choice(dead)]  # re-add: reuses a freed slot
            doc = f"new-{self.fresh}"
            self.fresh += 1
            inv.text[doc] = rng.choice(self.pool)
            return "add", [doc]
        return "search", []

    async def send(self, conn: Connection, rng: random.Random, kind: str, ids: list[str], sent: float) -> int:
        inv = self.inv
        if kind == "search":
            dead = inv.recent_deleted[-20:]
            # Half the time a recently deleted document's own text: the query its leak would answer best,
            # on the lexical side above all (its rare terms score highest in its own postings).
            q = inv.text[rng.choice(dead)] if dead and rng.random() < 0.5 else rng.choice(self.queries)
            mode = rng.choices(list(self.search_modes), weights=list(self.search_modes.values()))[0]
            req: dict[str, Any] = {"query": q[:2000], "k": rng.choice(self.k_choices), "mode": mode}
            if mode == "hybrid":
                req["fusion"] = defaults.FUSION if rng.random() < 0.5 else rng.choice(FUSIONS)
                req["explain"] = rng.random() < 0.1
            code, body = await conn.request("POST", "/search", req)
            tally = self.by_mode[mode]
            tally["requests"] += 1
            tally[f"status_{code}"] += 1
            self.mode_lat[mode].append(time.monotonic() - sent)
            if code == 200:
                hits = json.loads(body)["hits"]
                tally["hits_checked"] += len(hits)
                tally["violations"] += inv.check(hits, sent, mode)
            return code
        if kind == "get":
            code, body = await conn.request("GET", f"/documents/{quote(ids[0], safe='')}")
            if code in (200, 404):
                inv.check_get(ids[0], code, json.loads(body) if code == 200 else None, sent)
            return code
        inv.busy.update(ids)
        try:
            if kind == "add":
                inv.add_sent_at[ids[0]] = sent
                code, _ = await conn.request("POST", "/documents",
                                             {"documents": [{"_id": ids[0], "text": inv.text[ids[0]]}]})
                if code == 200:
                    inv.live.update(ids)
                    inv.add_acked_at[ids[0]] = time.monotonic()
                return code
            inv.delete_sent_at[ids[0]] = sent
            if rng.random() < 0.5:
                code, _ = await conn.request("DELETE", f"/documents/{quote(ids[0], safe='')}")
            else:
                code, _ = await conn.request("POST", "/documents/delete", {"ids": ids})
            if code == 200:
                inv.deleted_at[ids[0]] = time.monotonic()
                inv.live.discard(ids[0])
                inv.recent_deleted.append(ids[0])
            return code
        finally:
            inv.busy.difference_update(ids)

    async def worker(self, port: int, rng: random.Random) -> None:
        conn = await Connection(port).open()
        try:
            while self.left > 0 and time.monotonic() < self.deadline:
                self.left -= 1
                kind, ids = self.pick(rng)
                sent = time.monotonic()
                try:
                    code = await self.send(conn, rng, kind, ids, sent)
                except (OSError, asyncio.IncompleteReadError) as e:  # the connection broke: count it, reconnect
                    self.status[f"transport:{type(e).__name__}"] += 1
                    conn.close()
                    try:
                        conn = await Connection(port).open()
                    except OSError:
                        return  # the server is gone: the run reports it (server_alive, server_exit)
                    continue
                self.lat[kind].append(time.monotonic() - sent)
                # A get of a deleted document is answered 404 by design: counted apart from the other statuses.
                self.status["get:404" if kind == "get" and code == 404 else str(code)] += 1
        finally:
            conn.close()


async def _stats(port: int) -> dict[str, Any]:
    """The server's /stats, or {} when it no longer answers."""
    try:
        conn = await Connection(port).open()
    except OSError:
        return {}
    try:
        return json.loads((await conn.request("GET", "/stats"))[1])
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return {}
    finally:
        conn.close()


async def _drive(port: int, load: Load, concurrency: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    t0 = time.monotonic()
    await asyncio.gather(*(load.worker(port, random.Random(rng.random())) for _ in range(concurrency)))
    wall = time.monotonic() - t0
    final = await _stats(port)
    lat, status, inv = load.lat, load.status, load.inv
    done = sum(len(v) for v in lat.values())
    all_lat = [x for v in lat.values() for x in v]
    return {
        "requests": done, "seconds": round(wall, 2), "qps": round(done / wall, 1),
        "search_qps": round(len(lat["search"]) / wall, 1),
        "latency": timing.percentiles(all_lat) if all_lat else {},
        "latency_by_kind": {k: timing.percentiles(v) for k, v in lat.items() if v},
        "status": dict(status), "server_errors_5xx": sum(n for s, n in status.items() if s.startswith("5")),
        "transport_errors": sum(n for s, n in status.items() if s.startswith("transport")),
        "errors": done - status.get("200", 0) - status.get("get:404", 0),
        "by_mode": {m: {"requests": c["requests"], "errors": c["requests"] - c["status_200"],
                        "status": {k[7:]: n for k, n in c.items() if k.startswith("status_")},
                        "hits_checked": c["hits_checked"], "invariant_violations": c["violations"],
                        "latency": timing.percentiles(load.mode_lat[m]) if load.mode_lat[m] else {}}
                    for m, c in load.by_mode.items()},
        "invariant_violations": len(inv.violations), "violation_examples": inv.violations[:5],
        "hits_checked": inv.checked_hits, "gets_checked": inv.checked_gets,
        "gets_not_found": status.get("get:404", 0), "deleted_during_run": len(inv.deleted_at),
        "final_live_server": final.get("live"), "final_live_expected": len(inv.live),
    }


def run(index_dir: Path, live: dict[str, str], queries: list[str], requests: int = 100_000, seconds: float = 60.0,
        concurrency: int = 8, seed: int = 0, k_choices: tuple[int, ...] = (10, 100),
        server_args: Sequence[str] = (), search_modes: dict[str, float] | None = None) -> dict[str, Any]:
    """Serve ``index_dir`` (holding exactly ``live``: id -> text) in a child process and load it; returns the
    figures. ``search_modes``: mode -> weight of the searches (``SEARCH_MODES``)."""
    load_before = os.getloadavg()  # the machine is shared: record how busy it was
    load = Load(live, queries, requests, seconds, k_choices, search_modes)
    with start_server(index_dir, list(server_args)) as server:
        res = asyncio.run(_drive(server.port, load, concurrency, seed))
        res["server_alive"] = server.proc.poll() is None
        res["loadavg_1min"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
        server.stop(timeout=60)
        res["server_exit"] = server.proc.returncode
        res["server_stderr_tail"] = server.stderr_tail()
    res["server_traceback"] = "Traceback" in res["server_stderr_tail"]
    return res


def parse_modes(spec: str) -> dict[str, float]:
    """``hybrid=2,dense=1`` (or ``hybrid,dense``: equal weights) -> {mode: weight}."""
    import argparse

    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        mode, _, weight = part.partition("=")
        if mode not in SEARCH_MODES:
            raise argparse.ArgumentTypeError(f"search mode {mode!r} is not one of {', '.join(SEARCH_MODES)}")
        try:
            out[mode] = float(weight) if weight else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight {weight!r} of {mode} is not a number") from None
        if not out[mode] > 0:
            raise argparse.ArgumentTypeError(f"weight of {mode} must be > 0")
    if not out:
        raise argparse.ArgumentTypeError("give at least one search mode")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from hce_serve.engine import Engine
    from hce_serve.formats.beir import iter_corpus, load_queries

    ap = cli.study_parser(__doc__, "reliability", quick=False)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--queries", type=Path, required=True)
    ap.add_argument("--index", type=Path, default=None, help="reuse (a copy of) this built index instead of building")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads in the server")
    ap.add_argument("--search-modes", type=parse_modes, default=SEARCH_MODES,
                    help="mode=weight,... of the searches (dense, lexical, hybrid) "
                         "[hybrid=0.5,dense=0.25,lexical=0.25]")
    a = cli.parse(ap, argv)
    docs = {d.id: d.full_text for d in iter_corpus(a.corpus)}
    with tempfile.TemporaryDirectory(prefix="hce-load-") as tmp:
        idx = Path(tmp) / "idx"
        t = time.perf_counter()
        if a.index:
            shutil.copytree(a.index, idx)
        else:
            Engine.build(a.export, a.corpus, idx, progress=True)
        build_s = time.perf_counter() - t
        res = run(idx, docs, list(load_queries(a.queries).values()), a.requests, a.seconds, a.concurrency,
                  server_args=("--threads", str(a.threads)), search_modes=a.search_modes)
    res.update({"export": str(a.export), "corpus": str(a.corpus), "documents": len(docs), "concurrency": a.concurrency,
                "server_threads": a.threads, "mix": MIX, "search_modes": a.search_modes,
                "build_seconds": round(build_s, 1),
                "client": "benchmarks/loopback.py (asyncio keep-alive, same machine)"})
    provenance.write_result(a.out, res, __file__, section="load")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
