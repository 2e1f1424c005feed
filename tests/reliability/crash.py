"""Crash-safety harness: a writer process is killed with SIGKILL at random moments, then the index is checked.

Three writers, each in its own process: the Python store API (random vectors, so a cycle costs milliseconds),
the ``hce-serve index add|delete`` command line, and the ``hce-serve http`` server driven over loopback.
A mutation counts as *acknowledged* only once the call returned (store API: a line the child writes to an
ack file after ``add``/``delete`` returns; CLI: exit status 0; HTTP: a 200 answer). After each kill:

- the folder must load (read-only first, so a killed writer's leftovers must not trip a reader);
- every acknowledged add/upsert/delete must be visible (store API: the stored vector is the acknowledged
  version's); the one mutation in flight at the kill may be present or not, but nothing else;
- a search over every live document (``k`` = all) must return no deleted id;
- the next writer's open must leave no temp file, unreferenced generation or stale log behind.

Run ``python benchmarks/crash.py --modes store,cli,http --cycles 200 [--export EXPORT_DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from reliability import hce_serve_argv, start_server, update_results  # noqa: E402

UNIVERSE = 240  # document ids d0..d239: small enough that adds, upserts and deletes collide often
WORDS = ["protein", "enzyme", "climate", "carbon", "vaccine", "immune", "brain", "neuron", "cancer", "tumor", "diet", "insulin", "market", "price", "soil", "crop", "ocean", "glacier", "kinase", "synapse", "antibody", "trial", "growth", "gene"]


def unit_vector(doc_id: str, version: int, dim: int) -> np.ndarray:
    """The vector of one version of one document: derived from (id, version) so any process can recompute it."""
    v = np.random.default_rng(zlib.crc32(f"{doc_id}:{version}".encode())).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def doc_text(doc_id: str, version: int) -> str:
    r = random.Random(f"{doc_id}:{version}")
    return " ".join(r.choice(WORDS) for _ in range(r.randint(6, 20))) + f" v{version}"


@dataclass
class Expect:
    """What the index must hold: id -> acknowledged version. ``maybe``: ids of the mutation in flight at the kill."""

    live: dict[str, int] = field(default_factory=dict)
    maybe: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # id -> (before, after)
    acked: int = 0

    def apply(self, op: str, ids: list[str], versions: list[int] | None) -> None:
        self.acked += 1
        for j, i in enumerate(ids):
            if op == "add":
                self.live[i] = versions[j]  # type: ignore[index]
            else:
                self.live.pop(i, None)

    def in_flight(self, op: str, ids: list[str], versions: list[int] | None) -> None:
        for j, i in enumerate(ids):
            self.maybe[i] = (self.live.get(i), versions[j] if op == "add" else None)  # type: ignore[index]


@dataclass
class Tally:
    cycles: int = 0
    killed_mid_write: int = 0  # kills that landed while the writer was still running
    in_flight_at_kill: int = 0  # ... inside an add/delete call: that mutation may or may not have landed
    acked_mutations: int = 0
    load_failures: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # acknowledged writes missing or wrong after the kill
    deleted_returned: int = 0
    leftovers_cleaned: int = 0  # temp files / stale generations the next writer removed
    leftovers_after_open: int = 0  # ... that were still there after it (must be 0)
    writer_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "killed_mid_write": self.killed_mid_write, "in_flight_at_kill": self.in_flight_at_kill,
                "acked_mutations": self.acked_mutations,
                "failed_loads": len(self.load_failures), "lost_acked_writes": len(self.lost),
                "deleted_ids_returned": self.deleted_returned, "leftovers_cleaned": self.leftovers_cleaned,
                "leftovers_after_writer_open": self.leftovers_after_open, "writer_errors": len(self.writer_errors),
                "examples": (self.load_failures + self.lost + self.writer_errors)[:5], "seconds": round(self.seconds, 1)}


# ---- checking ------------------------------------------------------------------------------------------
def _leftovers(folder: Path) -> list[str]:
    from hce_serve.manifest import IndexManifest

    m = IndexManifest.load(folder)
    keep = {m.extra.get("data_dir"), f"wal-{m.generation:06d}.log"}
    return [p.name for p in folder.iterdir()
            if p.name.startswith(".tmp-") or (p.name.startswith(("gen-", "wal-")) and p.name not in keep)]


def check(folder: Path, exp: Expect, tally: Tally, dim: int, vectors: bool) -> None:
    """Load ``folder`` and compare it with ``exp``; afterwards ``exp`` holds what the index really holds."""
    from hce_serve.errors import HCEError
    from hce_serve.store import IndexStore

    before = _leftovers(folder) if (folder / "manifest.json").is_file() else []
    try:
        store = IndexStore.open(folder)  # a reader: must not trip over a killed writer's leftovers
    except HCEError as e:
        tally.load_failures.append(f"cycle {tally.cycles}: {e}")
        raise
    with store:
        idx = store.index
        for doc_id in {f"d{i}" for i in range(UNIVERSE)} | set(exp.live) | set(idx.ids()):
            has = doc_id in idx
            if doc_id in exp.maybe:
                ok = {exp.maybe[doc_id][0], exp.maybe[doc_id][1]}
            else:
                ok = {exp.live.get(doc_id)}
            got = None
            if has:
                got = "?"
                if vectors:
                    vec = idx.get_vectors([doc_id])[0]
                    got = next((v for v in ok if v is not None and np.allclose(vec, unit_vector(doc_id, v, dim), atol=1e-5)), "wrong")
                elif ok - {None}:
                    got = next(iter(ok - {None}))
            if got not in ok:
                tally.lost.append(f"cycle {tally.cycles}: {doc_id} expected version {sorted(ok, key=str)} found {got}")
            if has and got not in (None, "?", "wrong"):
                exp.live[doc_id] = got  # type: ignore[assignment]
            elif not has:
                exp.live.pop(doc_id, None)
        exp.maybe.clear()
        live = set(idx.ids())
        if live:
            rng = np.random.default_rng(tally.cycles)
            q = rng.standard_normal((8, dim)).astype(np.float32)  # (8, dim)
            for row in idx.search(q, k=UNIVERSE + 100):
                tally.deleted_returned += sum(1 for d, _ in row if d not in live or d not in exp.live)
    # The next writer's open removes what the killed one left; nothing may survive it.
    IndexStore.open(folder, writable=True).close()
    after = _leftovers(folder)
    tally.leftovers_cleaned += len(set(before) - set(after))
    tally.leftovers_after_open += len(after)


# ---- writer 1: the store API in a child process ----------------------------------------------------------
def _store_writer(folder: str, acks: str, seed: int, dim: int, first_version: int) -> None:
    from hce_serve.store import IndexStore

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
                s.add(ids, np.stack([unit_vector(i, v, dim) for i, v in zip(ids, vers, strict=True)]))
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
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import crash; "
            f"crash._store_writer({str(folder)!r}, {str(acks)!r}, {rng.randrange(2**31)}, {dim}, {state['version']})")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while '"ready"' not in acks.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.25))
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    if not running:
        tally.writer_errors.append(f"cycle {tally.cycles}: store writer exited early: {err.decode()[-300:]}")
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
            argv = [*hce_serve_argv(), "-q", "index", "add", "--index", str(folder), "--corpus", str(corpus)]
        else:
            argv = [*hce_serve_argv(), "-q", "index", "delete", "--index", str(folder), *sum((["--id", i] for i in ids), [])]
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
            tally.writer_errors.append(f"cycle {tally.cycles}: {' '.join(argv[-4:])} exit {proc.returncode}: {err.decode()[-300:]}")
            return
        exp.apply(op, ids, vers)
        tally.acked_mutations += 1


# ---- writer 3: the HTTP server ---------------------------------------------------------------------------
def http_cycle(folder: Path, exp: Expect, tally: Tally, rng: random.Random, dim: int, state: dict) -> None:
    import httpx

    proc, base = start_server(folder, ["--save-every", str(rng.choice([1, 2, 5]))])
    timer = threading.Timer(rng.uniform(0.0, 1.5), proc.send_signal, (signal.SIGKILL,))
    timer.start()
    try:
        with httpx.Client(base_url=base, timeout=30.0) as client:
            while True:
                op, ids, vers = _random_write(rng, state)
                try:
                    if op == "add":
                        docs = [{"_id": i, "text": doc_text(i, v)} for i, v in zip(ids, vers, strict=True)]  # type: ignore[arg-type]
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
        proc.kill()
        proc.communicate()


# ---- driver ----------------------------------------------------------------------------------------------
def _initial_store(folder: Path, dim: int) -> Expect:
    from hce_serve.index import Index, IndexParams
    from hce_serve.store import IndexStore

    idx = Index(dim, IndexParams(M=8, ef_construction=64, exact_threshold=0, compact_min_deleted=64))
    ids = [f"d{i}" for i in range(0, UNIVERSE, 2)]
    idx.add(ids, np.stack([unit_vector(i, 0, dim) for i in ids]))
    IndexStore.create(folder, idx, None)
    return Expect(live=dict.fromkeys(ids, 0))


def _initial_engine(folder: Path, export: Path) -> Expect:
    from hce_serve.engine import Engine
    from hce_serve.index import IndexParams

    ids = [f"d{i}" for i in range(0, UNIVERSE, 2)]
    corpus = folder.parent / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "title": "", "text": doc_text(i, 0)}) + "\n" for i in ids))
    Engine.build(export, corpus, folder, IndexParams(M=8, ef_construction=64, exact_threshold=0, compact_min_deleted=64))
    return Expect(live=dict.fromkeys(ids, 0))


def run(mode: str, cycles: int, workdir: Path, export: Path | None = None, seed: int = 0, dim: int = 16) -> dict[str, Any]:
    """Run ``cycles`` kill cycles of one writer ``mode`` (store | cli | http) in ``workdir``; returns the tally."""
    folder = workdir / f"idx-{mode}"
    if mode == "store":
        exp, step = _initial_store(folder, dim), store_cycle
    else:
        if export is None:
            raise ValueError(f"mode {mode} needs an EXPORT_DIR")
        from hce_serve.card import ModelCard

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


def main(argv: list[str] | None = None) -> None:
    from common import stamp

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="store,cli,http")
    p.add_argument("--cycles", default="200", help="cycles per mode, or mode=N,mode=N")
    p.add_argument("--export", type=Path, default=None, help="EXPORT_DIR for the cli/http writers")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    per = dict(kv.split("=") for kv in a.cycles.split(",")) if "=" in a.cycles else {}
    out = []
    with tempfile.TemporaryDirectory(prefix="hce-crash-") as tmp:
        for mode in a.modes.split(","):
            n = int(per.get(mode, a.cycles if not per else 0))
            res = run(mode, n, Path(tmp), a.export, a.seed)
            print(json.dumps(res), file=sys.stderr, flush=True)
            out.append(res)
    total = {k: sum(r[k] for r in out) for k in ("cycles", "killed_mid_write", "in_flight_at_kill", "acked_mutations", "failed_loads",
                                                  "lost_acked_writes", "deleted_ids_returned", "writer_errors")}
    update_results("crash", {"export": str(a.export) if a.export else None, "total": total, "modes": out}, stamp())
    print(json.dumps(total))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
