"""Crash-safety harness: a writer process is killed with SIGKILL at random moments, then the index is checked.

Three writers, each in its own process: the Python store API (random vectors, so a cycle costs milliseconds),
the ``hce-serve index add|delete`` command line, and the ``hce-serve http`` server driven over loopback.
A mutation counts as *acknowledged* only once the call returned (store API: a line the child writes to an
ack file after ``add``/``delete`` returns; CLI: exit status 0; HTTP: a 200 answer). Every folder is built
with stored documents and the lexical part (hybrid search's BM25 postings). After each kill ``ledger.check``
verifies the folder (see there): the vectors, docs.sqlite and the lexical postings hold the same live ids
(as a reader sees them and after the next writer's open), each document's stored text and postings carry
its acknowledged version, and nothing of a deleted or replaced text is found by a lexical search.

    python -m tests.reliability.crash --modes store,cli,http --cycles 200 [--export EXPORT_DIR] [--resume]

Each finished mode is written to the results section at once; ``--resume`` keeps the modes a killed run had
finished (same cycles and seed) and runs the rest.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import cli, provenance
from benchmarks.loopback import start_server

from .ledger import UNIVERSE, Expect, Tally, check, doc_text, unit_vector

TOTALS = ("cycles", "killed_mid_write", "in_flight_at_kill", "acked_mutations", "failed_loads", "lost_acked_writes",
          "deleted_ids_returned", "docs_checks", "docs_index_mismatch", "lexical_checks", "lexical_index_mismatch",
          "lexical_lost_acked_writes", "lexical_stale_postings", "lexical_deleted_ids_returned", "writer_errors")


# ---- writer 1: the store API in a child process ----------------------------------------------------------
def _store_writer(folder: str, acks: str, seed: int, dim: int, first_version: int) -> None:
    from hce_serve.documents import Document
    from hce_serve.folder.store import IndexStore

    rng = random.Random(seed)
    version = first_version
    with open(acks, "a", buffering=1) as out, IndexStore.open(folder, writable=True) as s:
        out.write('{"ready": true}\n')
        while True:
            r = rng.random()
            ids = [f"d{rng.randrange(UNIVERSE)}" for _ in range(rng.randint(1, 8))]
            ids = list(dict.fromkeys(ids))
            if r < 0.5:
                vers = list(range(version, version + len(ids)))
                version += len(ids)
                rec = {"op": "add", "ids": ids, "versions": vers}
                out.write(json.dumps({"intent": rec}) + "\n")
                batch = s.prepare([Document(i, "", doc_text(i, v)) for i, v in zip(ids, vers, strict=True)])
                s.add(batch, np.stack([unit_vector(i, v, dim) for i, v in zip(ids, vers, strict=True)]))
            elif r < 0.8:
                rec = {"op": "delete", "ids": ids, "versions": None}
                out.write(json.dumps({"intent": rec}) + "\n")
                s.delete(ids)
            elif r < 0.97:
                rec = {"op": "save", "ids": [], "versions": None}
                s.save()
            else:
                rec = {"op": "compact", "ids": [], "versions": None}
                s.compact()
            out.write(json.dumps({"ack": rec}) + "\n")


def _read_acks(path: Path, exp: Expect) -> int:
    """Apply acknowledged records; the last unacknowledged intent becomes ``maybe``. Returns the next version."""
    pending, top = None, 0
    for line in path.read_text().splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:  # the line being written at the kill
            continue
        if "intent" in obj:
            pending = obj["intent"]
        elif "ack" in obj:
            rec = obj["ack"]
            if rec["op"] in ("add", "delete"):
                exp.apply(rec["op"], rec["ids"], rec["versions"])
            top = max([top, *(rec["versions"] or [])])
            pending = None
    if pending is not None:
        exp.in_flight(pending["op"], pending["ids"], pending["versions"])
        top = max([top, *(pending["versions"] or [])])
    return top + 1


def store_cycle(folder: Path, exp: Expect, tally: Tally, rng: random.Random, dim: int, state: dict) -> None:
    acks = folder.parent / f"acks-{tally.cycles}.jsonl"
    acks.write_text("")
    # spawn: a fresh interpreter, as a real writer process would be, not a fork of this one's state.
    proc = multiprocessing.get_context("spawn").Process(
        target=_store_writer, args=(str(folder), str(acks), rng.randrange(2**31), dim, state["version"]), daemon=True)
    proc.start()
    deadline = time.monotonic() + 60
    while '"ready"' not in acks.read_text() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.25))
    running = proc.is_alive()
    proc.kill()  # SIGKILL
    proc.join()
    if not running:
        tally.writer_errors.append(f"cycle {tally.cycles}: store writer exited early with {proc.exitcode} "
                                   "(its traceback went to stderr)")
    tally.killed_mid_write += running
    before = exp.acked
    state["version"] = _read_acks(acks, exp)
    tally.acked_mutations += exp.acked - before
    acks.unlink()


# ---- writer 2: the command line --------------------------------------------------------------------------
def _random_write(rng: random.Random, state: dict) -> tuple[str, list[str], list[int] | None]:
    ids = list(dict.fromkeys(f"d{rng.randrange(UNIVERSE)}" for _ in range(rng.randint(1, 6))))
    if rng.random() < 0.6:
        vers = list(range(state["version"], state["version"] + len(ids)))
        state["version"] += len(ids)
        return "add", ids, vers
    return "delete", ids, None


def cli_cycle(folder: Path, exp: Expect, tally: Tally, rng: random.Random, dim: int, state: dict) -> None:
    """Run CLI writes one after another; the one running at a random moment is killed."""
    kill_at = time.monotonic() + rng.uniform(0.2, 4.0)
    while True:
        op, ids, vers = _random_write(rng, state)
        if op == "add":
            corpus = folder.parent / "more.jsonl"
            corpus.write_text("".join(json.dumps({"_id": i, "title": "", "text": doc_text(i, v)}) + "\n"
                                      for i, v in zip(ids, vers, strict=True)))  # type: ignore[arg-type]
            argv = [*cli.tool_argv(), "-q", "index", "add", "--index", str(folder), "--corpus", str(corpus)]
        else:
            argv = [*cli.tool_argv(), "-q", "index", "delete", "--index", str(folder),
                    *sum((["--id", i] for i in ids), [])]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=max(0.0, kill_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            tally.killed_mid_write += 1
            exp.in_flight(op, ids, vers)
            return
        _, err = proc.communicate()
        if proc.returncode != 0:
            tally.writer_errors.append(f"cycle {tally.cycles}: {' '.join(argv[-4:])} exit {proc.returncode}: "
                                       f"{err.decode()[-300:]}")
            return
        exp.apply(op, ids, vers)
        tally.acked_mutations += 1


# ---- writer 3: the HTTP server ---------------------------------------------------------------------------
def http_cycle(folder: Path, exp: Expect, tally: Tally, rng: random.Random, dim: int, state: dict) -> None:
    import httpx

    server = start_server(folder, ["--save-every", str(rng.choice([1, 2, 5]))])
    timer = threading.Timer(rng.uniform(0.0, 1.5), server.proc.send_signal, (signal.SIGKILL,))
    timer.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            while True:
                op, ids, vers = _random_write(rng, state)
                try:
                    if op == "add":
                        docs = [{"_id": i, "text": doc_text(i, v)}  # type: ignore[arg-type]
                                for i, v in zip(ids, vers, strict=True)]
                        r = client.post("/documents", json={"documents": docs})
                    elif len(ids) == 1 and rng.random() < 0.5:
                        r = client.delete(f"/documents/{ids[0]}")
                    else:
                        r = client.post("/documents/delete", json={"ids": ids})
                except httpx.HTTPError:  # the kill landed while this request was in flight
                    exp.in_flight(op, ids, vers)
                    tally.killed_mid_write += 1
                    return
                if r.status_code == 200 or (r.status_code == 404 and op == "delete"):
                    exp.apply(op, ids, vers)
                    tally.acked_mutations += 1
                else:
                    tally.writer_errors.append(f"cycle {tally.cycles}: {op} -> {r.status_code} {r.text[:200]}")
    finally:
        timer.cancel()
        server.proc.kill()
        server.__exit__()


# ---- driver ----------------------------------------------------------------------------------------------
def _initial_store(folder: Path, dim: int) -> Expect:
    """A folder of random vectors with their documents and the lexical part, as ``index build`` makes them."""
    from hce_serve.documents import Document
    from hce_serve.folder.store import IndexStore
    from hce_serve.index.index import Index
    from hce_serve.lexical.bm25 import LexicalIndex
    from hce_serve.options import IndexParams

    idx = Index(dim, IndexParams(M=8, ef_construction=64, exact_threshold=0, compact_min_deleted=64))
    ids = [f"d{i}" for i in range(0, UNIVERSE, 2)]
    idx.add(ids, np.stack([unit_vector(i, 0, dim) for i in ids]))
    docs = [Document(i, "", doc_text(i, 0)) for i in ids]
    IndexStore.create(folder, idx, None, documents=docs, lexical=LexicalIndex.build((d.id, d.full_text) for d in docs))
    return Expect(live=dict.fromkeys(ids, 0))


def _initial_engine(folder: Path, export: Path) -> Expect:
    from hce_serve.engine import Engine
    from hce_serve.options import IndexParams

    ids = [f"d{i}" for i in range(0, UNIVERSE, 2)]
    corpus = folder.parent / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "title": "", "text": doc_text(i, 0)}) + "\n" for i in ids))
    Engine.build(export, corpus, folder,
                 IndexParams(M=8, ef_construction=64, exact_threshold=0, compact_min_deleted=64),
                 lexical=True)
    return Expect(live=dict.fromkeys(ids, 0))


def run(mode: str, cycles: int, workdir: Path, export: Path | None = None, seed: int = 0,
        dim: int = 16) -> dict[str, Any]:
    """Run ``cycles`` kill cycles of one writer ``mode`` (store | cli | http) in ``workdir``; returns the tally."""
    folder = workdir / f"idx-{mode}"
    if mode == "store":
        exp, step = _initial_store(folder, dim), store_cycle
    else:
        if export is None:
            raise ValueError(f"mode {mode} needs an EXPORT_DIR")
        from hce_serve.formats.card import ModelCard

        dim = ModelCard.load(export).dim
        exp, step = _initial_engine(folder, export), {"cli": cli_cycle, "http": http_cycle}[mode]
    rng, tally, state = random.Random(seed), Tally(), {"version": 1}
    t0 = time.perf_counter()
    for _ in range(cycles):
        tally.cycles += 1
        step(folder, exp, tally, rng, dim, state)
        tally.in_flight_at_kill += bool(exp.maybe)
        try:
            check(folder, exp, tally, dim, vectors=(mode == "store"))
        except Exception:  # counted in load_failures; the harness cannot go on with this folder
            break
    tally.seconds = time.perf_counter() - t0
    return {"mode": mode, **tally.summary()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "reliability", quick=False)
    ap.add_argument("--modes", default="store,cli,http")
    ap.add_argument("--cycles", default="200", help="cycles per mode, or mode=N,mode=N")
    ap.add_argument("--export", type=Path, default=None, help="EXPORT_DIR for the cli/http writers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="keep the modes --out already holds (same cycles and seed)")
    a = cli.parse(ap, argv)
    per = dict(kv.split("=") for kv in a.cycles.split(",")) if "=" in a.cycles else {}
    plan = [(mode, int(per.get(mode, a.cycles if not per else 0))) for mode in a.modes.split(",")]
    done = _finished_modes(a.out, a.seed) if a.resume else {}
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hce-crash-") as tmp:
        for mode, cycles in plan:
            if done.get(mode, {}).get("planned_cycles") == cycles:
                out.append(done[mode])
                print(f"{mode}: kept from {a.out}", file=sys.stderr, flush=True)
                continue
            res = {**run(mode, cycles, Path(tmp), a.export, a.seed), "planned_cycles": cycles}
            print(json.dumps(res), file=sys.stderr, flush=True)
            out.append(res)
            _write(a, out)  # after each mode: a killed run keeps what it finished
    total = _write(a, out)
    print(json.dumps(total))
    return 0


def _write(a: Any, out: list[dict[str, Any]]) -> dict[str, int]:
    total = {k: sum(r[k] for r in out) for k in TOTALS}
    provenance.write_result(a.out, {"export": str(a.export) if a.export else None, "seed": a.seed, "total": total,
                                    "modes": out}, __file__, section="crash")
    return total


def _finished_modes(out: Path, seed: int) -> dict[str, dict[str, Any]]:
    """The modes an earlier run with this seed wrote to ``out``'s crash section (with every current column)."""
    try:
        section = json.loads(out.read_text()).get("crash") or {}
    except (OSError, ValueError):
        return {}
    if section.get("seed") != seed:
        return {}
    return {m["mode"]: m for m in section.get("modes", []) if all(k in m for k in TOTALS)}

if __name__ == "__main__":
    sys.exit(main())
