"""What a crash test expects to find after a writer was killed, and the check that compares it with the
index: acknowledged writes are durable, the one in flight may or may not have landed, deleted ids are
never returned, and the next writer's open leaves no temporary file or stale generation behind.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


