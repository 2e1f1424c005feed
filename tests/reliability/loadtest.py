"""Bounded concurrent load test of ``hce-serve http`` on loopback: searches mixed with adds and deletes.

An async httpx client keeps ``--concurrency`` requests in flight until ``--requests`` were sent or
``--seconds`` passed (whichever first), against a server in its own process on 127.0.0.1. It reports
throughput, latency percentiles per request kind, status counts (5xx must be 0), whether the server
survived, and checks one invariant on every search answer:

    a document whose delete was acknowledged before the search was sent, and whose re-add was not sent
    before the search was answered, must not be in the hits.

No two writes for the same id are ever in flight together, so "acknowledged deleted" is well defined.
Searches aim at recently deleted documents (their own text as the query) so a leak would show.

``python benchmarks/loadtest.py --export EXPORT_DIR --corpus corpus.jsonl --queries queries.jsonl --seconds 60``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import percentiles, stamp  # noqa: E402
from reliability import start_server, update_results  # noqa: E402

MIX = {"search": 0.8, "add": 0.1, "delete": 0.1}


class Invariant:
    """Client-side record of acknowledged writes, and the check of every search answer against it."""

    def __init__(self, live: dict[str, str]) -> None:
        self.text = dict(live)  # every id ever added -> its text
        self.live = set(live)
        self.busy: set[str] = set()
        self.deleted_at: dict[str, float] = {}  # id -> when its delete was acknowledged
        self.add_sent_at: dict[str, float] = {}  # id -> when its latest add was sent
        self.recent_deleted: list[str] = []
        self.violations: list[str] = []
        self.checked_hits = 0

    def check(self, hits: list[dict[str, Any]], sent: float) -> None:
        for h in hits:
            d = h["id"]
            self.checked_hits += 1
            if d not in self.text:
                self.violations.append(f"unknown id {d!r} returned")
                continue
            gone = self.deleted_at.get(d)
            if gone is not None and gone < sent and self.add_sent_at.get(d, -1.0) < gone:
                self.violations.append(f"{d!r} returned {time.monotonic() - gone:.3f} s after its delete was acknowledged")


async def _worker(client: Any, inv: Invariant, rng: random.Random, queries: list[str], pool: list[str],
                  budget: dict[str, Any], lat: dict[str, list[float]], status: Counter, k_choices: tuple[int, ...]) -> None:
    import httpx

    while budget["left"] > 0 and time.monotonic() < budget["deadline"]:
        budget["left"] -= 1
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        ids: list[str] = []
        if kind == "delete":
            cand = [d for d in rng.sample(sorted(inv.live), min(8, len(inv.live))) if d not in inv.busy]
            if not cand:
                kind = "search"
            else:
                ids = cand[:1]
        elif kind == "add":
            dead = [d for d in inv.recent_deleted[-50:] if d not in inv.busy and d not in inv.live]
            if dead and rng.random() < 0.5:
                ids = [rng.choice(dead)]  # re-add: reuses a freed slot
            else:
                ids = [f"new-{budget['fresh']}"]
                budget["fresh"] += 1
                inv.text[ids[0]] = rng.choice(pool)
        sent = time.monotonic()
        try:
            if kind == "search":
                dead = inv.recent_deleted[-20:]
                q = inv.text[rng.choice(dead)] if dead and rng.random() < 0.5 else rng.choice(queries)
                r = await client.post("/search", json={"query": q[:2000], "k": rng.choice(k_choices)})
                if r.status_code == 200:
                    inv.check(r.json()["hits"], sent)
            elif kind == "add":
                inv.busy.update(ids)
                inv.add_sent_at[ids[0]] = sent
                r = await client.post("/documents", json={"documents": [{"_id": ids[0], "text": inv.text[ids[0]]}]})
                if r.status_code == 200:
                    inv.live.update(ids)
                inv.busy.difference_update(ids)
            else:
                inv.busy.update(ids)
                if rng.random() < 0.5:
                    r = await client.delete(f"/documents/{ids[0]}")
                else:
                    r = await client.post("/documents/delete", json={"ids": ids})
                if r.status_code == 200:
                    inv.deleted_at[ids[0]] = time.monotonic()
                    inv.live.discard(ids[0])
                    inv.recent_deleted.append(ids[0])
                inv.busy.difference_update(ids)
        except httpx.HTTPError as e:
            status[f"transport:{type(e).__name__}"] += 1
            inv.busy.difference_update(ids)
            continue
        lat[kind].append(time.monotonic() - sent)
        status[str(r.status_code)] += 1


async def _drive(base: str, live: dict[str, str], queries: list[str], requests: int, seconds: float,
                 concurrency: int, seed: int, k_choices: tuple[int, ...]) -> dict[str, Any]:
    import httpx

    inv = Invariant(live)
    rng = random.Random(seed)
    pool = list(live.values())
    lat: dict[str, list[float]] = {k: [] for k in MIX}
    status: Counter = Counter()
    budget = {"left": requests, "deadline": time.monotonic() + seconds, "fresh": 0}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as client:
        await asyncio.gather(*(_worker(client, inv, random.Random(rng.random()), queries, pool, budget, lat, status, k_choices)
                               for _ in range(concurrency)))
        wall = time.monotonic() - t0
        final = (await client.get("/stats")).json()
    done = sum(len(v) for v in lat.values())
    all_lat = [x for v in lat.values() for x in v]
    return {
        "requests": done, "seconds": round(wall, 2), "qps": round(done / wall, 1),
        "search_qps": round(len(lat["search"]) / wall, 1),
        "latency": percentiles(all_lat) if all_lat else {},
        "latency_by_kind": {k: percentiles(v) for k, v in lat.items() if v},
        "status": dict(status), "server_errors_5xx": sum(n for s, n in status.items() if s.startswith("5")),
        "transport_errors": sum(n for s, n in status.items() if s.startswith("transport")),
        "invariant_violations": len(inv.violations), "violation_examples": inv.violations[:5],
        "hits_checked": inv.checked_hits, "deleted_during_run": len(inv.deleted_at),
        "final_live_server": final.get("live"), "final_live_expected": len(inv.live),
    }


def run(index_dir: Path, live: dict[str, str], queries: list[str], requests: int = 100_000, seconds: float = 60.0,
        concurrency: int = 8, seed: int = 0, k_choices: tuple[int, ...] = (10, 100), server_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Serve ``index_dir`` (holding exactly ``live``: id -> text) in a child process and load it; returns the figures."""
    proc, base = start_server(index_dir, list(server_args))
    load_before = os.getloadavg()  # the machine is shared: record how busy it was
    try:
        res = asyncio.run(_drive(base, live, queries, requests, seconds, concurrency, seed, k_choices))
        res["server_alive"] = proc.poll() is None
        res["loadavg_1min"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=60)
        except Exception:
            proc.kill()
            _, err = proc.communicate()
    res["server_exit"] = proc.returncode
    res["server_stderr_tail"] = err.decode(errors="replace")[-500:]
    res["server_traceback"] = "Traceback" in res["server_stderr_tail"]
    return res


def main(argv: list[str] | None = None) -> None:
    from hce_serve.beir import iter_corpus, load_queries
    from hce_serve.engine import Engine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--index", type=Path, default=None, help="reuse (a copy of) this built index instead of building")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads in the server")
    a = p.parse_args(argv)
    import shutil

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
                  server_args=("--threads", str(a.threads)))
    res.update({"export": str(a.export), "corpus": str(a.corpus), "documents": len(docs), "concurrency": a.concurrency,
                "server_threads": a.threads, "mix": MIX, "build_seconds": round(build_s, 1)})
    update_results("load", res, stamp())
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
