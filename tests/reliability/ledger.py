"""What a crash test expects to find after a writer was killed, and the check that compares it with the
index: acknowledged writes are durable, the one in flight may or may not have landed, deleted ids are
never returned, the document store (docs.sqlite) and the lexical postings (the BM25 side of hybrid
search) hold exactly the vector index's live ids (as a reader sees them and as the next writer leaves
them), the postings hold each live document's acknowledged text and nothing of a replaced or deleted one,
and the next writer's open leaves no temporary file or stale generation behind.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

UNIVERSE = 240  # document ids d0..d239: small enough that adds, upserts and deletes collide often
WORDS = ["protein", "enzyme", "climate", "carbon", "vaccine", "immune", "brain", "neuron", "cancer", "tumor", "diet",
         "insulin", "market", "price", "soil", "crop", "ocean", "glacier", "kinase", "synapse", "antibody", "trial",
         "growth", "gene"]


def unit_vector(doc_id: str, version: int, dim: int) -> np.ndarray:
    """The vector of one version of one document: derived from (id, version) so any process can recompute it."""
    v = np.random.default_rng(zlib.crc32(f"{doc_id}:{version}".encode())).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def doc_text(doc_id: str, version: int) -> str:
    """The text of one version of one document. It ends with the term ``v<version>``: every write gets a fresh
    version, so a lexical search for that term must find exactly the documents holding that version (all of
    the initial documents share version 0)."""
    r = random.Random(f"{doc_id}:{version}")
    return " ".join(r.choice(WORDS) for _ in range(r.randint(6, 20))) + f" v{version}"


def version_term(version: int) -> str:
    return f"v{version}"


@dataclass
class Expect:
    """What the index must hold: id -> acknowledged version. ``maybe``: ids of the mutation in flight at the kill.

    ``touched``: the versions whose text a write since the last check added, replaced or deleted: the version
    terms the next check probes besides the live ones (a version untouched since was probed before)."""

    live: dict[str, int] = field(default_factory=dict)
    maybe: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # id -> (before, after)
    acked: int = 0
    touched: set[int] = field(default_factory=set)

    def apply(self, op: str, ids: list[str], versions: list[int] | None) -> None:
        self.acked += 1
        for j, i in enumerate(ids):
            self._touch(self.live.get(i), versions[j] if op == "add" else None)  # type: ignore[index]
            if op == "add":
                self.live[i] = versions[j]  # type: ignore[index]
            else:
                self.live.pop(i, None)

    def in_flight(self, op: str, ids: list[str], versions: list[int] | None) -> None:
        for j, i in enumerate(ids):
            self.maybe[i] = (self.live.get(i), versions[j] if op == "add" else None)  # type: ignore[index]
            self._touch(*self.maybe[i])

    def _touch(self, *versions: int | None) -> None:
        self.touched.update(v for v in versions if v is not None)


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
    lexical_checks: int = 0  # comparisons of the lexical postings' live ids with the index's (2 per cycle)
    lexical_mismatch: list[str] = field(default_factory=list)  # ... that found two different sets (or no postings)
    lexical_lost: list[str] = field(default_factory=list)  # live documents whose acknowledged text the postings lack
    lexical_stale: list[str] = field(default_factory=list)  # postings of a replaced or deleted text still found
    lexical_deleted_returned: int = 0  # ids not live in the index returned by a lexical search
    leftovers_cleaned: int = 0  # temp files / stale generations the next writer removed
    leftovers_after_open: int = 0  # ... that were still there after it (must be 0)
    writer_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "killed_mid_write": self.killed_mid_write,
                "in_flight_at_kill": self.in_flight_at_kill,
                "acked_mutations": self.acked_mutations,
                "failed_loads": len(self.load_failures), "lost_acked_writes": len(self.lost),
                "deleted_ids_returned": self.deleted_returned, "docs_checks": self.docs_checks,
                "docs_index_mismatch": len(self.docs_mismatch), "lexical_checks": self.lexical_checks,
                "lexical_index_mismatch": len(self.lexical_mismatch),
                "lexical_lost_acked_writes": len(self.lexical_lost), "lexical_stale_postings": len(self.lexical_stale),
                "lexical_deleted_ids_returned": self.lexical_deleted_returned,
                "leftovers_cleaned": self.leftovers_cleaned,
                "leftovers_after_writer_open": self.leftovers_after_open, "writer_errors": len(self.writer_errors),
                "examples": (self.load_failures + self.lost + self.docs_mismatch + self.lexical_mismatch
                             + self.lexical_lost + self.lexical_stale + self.writer_errors)[:5],
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


def _compare_lexical(what: str, lexical: Any, live: set[str], tally: Tally) -> None:
    tally.lexical_checks += 1
    if lexical is None:
        tally.lexical_mismatch.append(f"cycle {tally.cycles}: {what}: the folder has no lexical part")
        return
    ids = lexical.live_ids()
    if ids != live:
        only_lex, only_index = sorted(ids - live), sorted(live - ids)
        tally.lexical_mismatch.append(f"cycle {tally.cycles}: {what}: the lexical postings have {only_lex[:5]} the "
                                      f"index lacks, the index has {only_index[:5]} the postings lack")


def _check_postings(lexical: Any, versions: dict[str, int], live: set[str], probe: set[int], tally: Tally) -> None:
    """Search the raw postings (no filter by the vector index) for each version term in ``probe``: the hits must
    be exactly the live documents holding that version (``versions``: id -> the version the vectors or the
    stored text showed; ids whose version could not be read are left out, already counted as lost).
    Then a few plain-word searches: no id that is not live in the vector index may come back."""
    k = UNIVERSE + 100  # more than every document: a search returns all it matches
    holders: dict[int, set[str]] = {}
    for doc_id, v in versions.items():
        holders.setdefault(v, set()).add(doc_id)
    for v in sorted(probe | set(holders)):
        found = {d for d, _ in lexical.search(version_term(v), k)}
        want = holders.get(v, set())
        for d in sorted(want - found):
            tally.lexical_lost.append(f"cycle {tally.cycles}: {d} holds version {v} but a lexical search for "
                                      f"{version_term(v)!r} does not find it")
        for d in sorted(found - want):
            if d in versions or d not in live:
                tally.lexical_stale.append(f"cycle {tally.cycles}: a lexical search for {version_term(v)!r} found "
                                           f"{d}, which holds version {versions.get(d, 'none (deleted)')}")
    for word in WORDS[: 6 + tally.cycles % 6]:
        tally.lexical_deleted_returned += sum(1 for d, _ in lexical.search(word, k) if d not in live)


def check(folder: Path, exp: Expect, tally: Tally, dim: int, vectors: bool) -> None:
    """Load ``folder`` and compare it with ``exp``; afterwards ``exp`` holds what the index really holds.

    ``vectors``: each id's version is read from its vector (the store writer's random vectors; its stored
    text must then carry the same version); otherwise, where the index stores documents, from its stored
    text (``doc_text``), so a replace that reached one of the two and not the other is a lost write as well
    as a mismatch. The lexical postings are checked against the versions found (``_check_postings``).
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
        versions: dict[str, int] = {}
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
                    got = next((v for v in ok if v is not None
                                and np.allclose(vec, unit_vector(doc_id, v, dim), atol=1e-5)), "wrong")
                    stored = _stored_version(docs[doc_id]) if docs is not None and doc_id in docs else None
                    if docs is not None and stored != got:
                        tally.lost.append(f"cycle {tally.cycles}: {doc_id}'s vector is version {got}, its stored "
                                          f"text {stored if stored is not None else 'missing'}")
                elif docs is not None:
                    got = _stored_version(docs[doc_id]) if doc_id in docs else "no stored document"
                elif ok - {None}:
                    got = next(iter(ok - {None}))
            if got not in ok:
                tally.lost.append(f"cycle {tally.cycles}: {doc_id} expected version {sorted(ok, key=str)} found {got}")
            if has and isinstance(got, int):
                exp.live[doc_id] = versions[doc_id] = got
            elif not has:
                exp.live.pop(doc_id, None)
        exp.maybe.clear()
        live = set(idx.ids())
        if docs is not None:
            _compare_docs("reader after the kill", set(docs), live, tally)
        _compare_lexical("reader after the kill", store.lexical, live, tally)
        if store.lexical is not None:
            _check_postings(store.lexical, versions, live, exp.touched, tally)
        exp.touched.clear()
        if live:
            rng = np.random.default_rng(tally.cycles)
            q = rng.standard_normal((8, dim)).astype(np.float32)  # (8, dim)
            for row in idx.search(q, k=UNIVERSE + 100):
                tally.deleted_returned += sum(1 for d, _ in row if d not in live or d not in exp.live)
    # The next writer's open removes what the killed one left and folds the log into docs.sqlite; nothing
    # may survive it, and the file and the postings must then hold exactly the live ids.
    with IndexStore.open(folder, writable=True) as writer:
        live = set(writer.index.ids())
        if writer.docs is not None:
            _compare_docs("docs.sqlite after the next writer's open", writer.docs.ids(), live, tally)
        _compare_lexical("the postings after the next writer's open", writer.lexical, live, tally)
    after = _leftovers(folder)
    tally.leftovers_cleaned += len(set(before) - set(after))
    tally.leftovers_after_open += len(after)
