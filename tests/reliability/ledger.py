"""What a crash test expects to find after a writer was killed, and the check that compares it with the
index: acknowledged writes are durable, the one in flight may or may not have landed, deleted ids are
never returned, the document store (docs.sqlite, as a reader sees it and as the next writer leaves it)
holds exactly the index's live ids, and the next writer's open leaves no temporary file or stale
generation behind.
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
    docs_checks: int = 0  # comparisons of docs.sqlite's ids with the index's live ids (2 per cycle when stored)
    docs_mismatch: list[str] = field(default_factory=list)  # ... that found two different sets
    leftovers_cleaned: int = 0  # temp files / stale generations the next writer removed
    leftovers_after_open: int = 0  # ... that were still there after it (must be 0)
    writer_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "killed_mid_write": self.killed_mid_write, "in_flight_at_kill": self.in_flight_at_kill,
                "acked_mutations": self.acked_mutations,
                "failed_loads": len(self.load_failures), "lost_acked_writes": len(self.lost),
                "deleted_ids_returned": self.deleted_returned, "docs_checks": self.docs_checks,
                "docs_index_mismatch": len(self.docs_mismatch), "leftovers_cleaned": self.leftovers_cleaned,
                "leftovers_after_writer_open": self.leftovers_after_open, "writer_errors": len(self.writer_errors),
                "examples": (self.load_failures + self.lost + self.docs_mismatch + self.writer_errors)[:5],
                "seconds": round(self.seconds, 1)}



def _leftovers(folder: Path) -> list[str]:
    from hce_serve.folder.manifest import IndexManifest

    m = IndexManifest.load(folder)
    keep = {m.extra.get("data_dir"), f"wal-{m.generation:06d}.log"}
    return [p.name for p in folder.iterdir()
            if p.name.startswith(".tmp-") or (p.name.startswith(("gen-", "wal-")) and p.name not in keep)]


def _stored_version(doc: Any) -> int | str:
    """The version a stored document carries (``doc_text`` ends with " v<version>")."""
    head, _, tail = doc.text.rpartition(" v")
    return int(tail) if head and tail.isdigit() else "unparsable"


def _compare_docs(what: str, doc_ids: set[str], live: set[str], tally: Tally) -> None:
    tally.docs_checks += 1
    if doc_ids != live:
        only_docs, only_index = sorted(doc_ids - live), sorted(live - doc_ids)
        tally.docs_mismatch.append(f"cycle {tally.cycles}: {what}: docs.sqlite has {only_docs[:5]} the index lacks, "
                                   f"the index has {only_index[:5]} docs.sqlite lacks")


def check(folder: Path, exp: Expect, tally: Tally, dim: int, vectors: bool) -> None:
    """Load ``folder`` and compare it with ``exp``; afterwards ``exp`` holds what the index really holds.

    ``vectors``: each id's version is read from its vector (the store writer's random vectors); otherwise,
    where the index stores documents, from its stored text (``doc_text``), so a replace that reached one of
    the two and not the other is a lost write as well as a mismatch.
    """
    from hce_serve.errors import HCEError
    from hce_serve.folder.store import IndexStore

    before = _leftovers(folder) if (folder / "manifest.json").is_file() else []
    try:
        store = IndexStore.open(folder)  # a reader: must not trip over a killed writer's leftovers
    except HCEError as e:
        tally.load_failures.append(f"cycle {tally.cycles}: {e}")
        raise
    with store:
        idx = store.index
        ids = {f"d{i}" for i in range(UNIVERSE)} | set(exp.live) | set(idx.ids())
        # The reader's view of the documents: docs.sqlite plus the log records a writer has not folded in yet.
        docs = store.get(ids | store.docs.ids()) if store.docs is not None else None
        for doc_id in ids:
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
                elif docs is not None:
                    got = _stored_version(docs[doc_id]) if doc_id in docs else "no stored document"
                elif ok - {None}:
                    got = next(iter(ok - {None}))
            if got not in ok:
                tally.lost.append(f"cycle {tally.cycles}: {doc_id} expected version {sorted(ok, key=str)} found {got}")
            if has and isinstance(got, int):
                exp.live[doc_id] = got
            elif not has:
                exp.live.pop(doc_id, None)
        exp.maybe.clear()
        live = set(idx.ids())
        if docs is not None:
            _compare_docs("reader after the kill", set(docs), live, tally)
        if live:
            rng = np.random.default_rng(tally.cycles)
            q = rng.standard_normal((8, dim)).astype(np.float32)  # (8, dim)
            for row in idx.search(q, k=UNIVERSE + 100):
                tally.deleted_returned += sum(1 for d, _ in row if d not in live or d not in exp.live)
    # The next writer's open removes what the killed one left and folds the log into docs.sqlite; nothing
    # may survive it, and the file itself must then hold exactly the live ids.
    with IndexStore.open(folder, writable=True) as writer:
        if writer.docs is not None:
            _compare_docs("docs.sqlite after the next writer's open", writer.docs.ids(), set(writer.index.ids()), tally)
    after = _leftovers(folder)
    tally.leftovers_cleaned += len(set(before) - set(after))
    tally.leftovers_after_open += len(after)
