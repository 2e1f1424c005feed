"""IndexStore with stored documents: one check per batch, one writer lock, the compaction policy, and the
durability rule shared by vectors and documents (after kill -9 the live ids of both are the same set)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hce_serve.beir import Document
from hce_serve.checks import check_filter
from hce_serve.docstore import DOCS_NAME, DocStore
from hce_serve.errors import DataError, FormatError, HCEError
from hce_serve.index import Index, IndexParams
from hce_serve.store import IndexStore
from hce_serve.wal import wal_name

pytest.importorskip("hnswlib")

DIM = 8


def unit(seed: int, n: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def doc(i: int | str, version: int = 0) -> Document:
    return Document(f"d{i}", f"title {i} v{version}", f"text of {i}", {"version": version})


def make_store(folder: Path, n: int = 50, **params) -> Path:
    idx = Index(DIM, IndexParams(exact_threshold=0, **params), capacity=16)
    docs = [doc(i) for i in range(n)]
    idx.add([d.id for d in docs], unit(0, n))
    IndexStore.create(folder, idx, None, documents=docs)
    return folder


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_store(tmp_path / "idx")


def agree(folder: Path) -> tuple[set[str], set[str]]:
    """(live ids of the vector index, ids of the document store) as a writer's open leaves them."""
    with IndexStore.open(folder, writable=True) as s:
        return set(s.index.ids()), s.docs.ids()


def test_layout_and_manifest_version(folder, tmp_path):
    assert (folder / DOCS_NAME).is_file() and not list(folder.parent.glob(".tmp-*"))
    m = json.loads((folder / "manifest.json").read_text())
    assert m["format_version"] == 2 and m["documents"] == DOCS_NAME  # older releases refuse it, not corrupt it
    ids_only = tmp_path / "ids-only"
    idx = Index(DIM, IndexParams())
    idx.add(["a"], unit(1, 1))
    IndexStore.create(ids_only, idx, None)
    m = json.loads((ids_only / "manifest.json").read_text())
    assert m["format_version"] == 1 and "documents" not in m  # still readable by older releases
    with IndexStore.open(ids_only) as s:
        assert s.docs is None and s.documents(["a"]) == {}
        with pytest.raises(DataError, match="no documents"):
            s.match(check_filter({"x": 1}))


def test_documents_follow_adds_replaces_and_deletes(folder):
    with IndexStore.open(folder, writable=True) as s:
        batch = s.prepare([{"_id": "new", "title": "T", "text": "body", "metadata": {"lang": "en", "tags": ["a", "b"]}},
                           doc(3, version=1)])
        assert s.add_batch(batch, unit(2, 2)).added == 1
        assert s.documents(["new"])["new"] == Document("new", "T", "body", {"lang": "en", "tags": ["a", "b"]})
        assert s.documents(["d3"])["d3"].metadata["version"] == 1
        assert s.match(check_filter({"version": 1})) == {"d3"}  # the replaced value left the filter index
        assert s.match(check_filter({"version": 1})) is s.match(check_filter({"version": [1]}))  # remembered
        assert s.match(check_filter({"tags": "b", "lang": ["en", "fr"]})) == {"new"}
        assert s.match(check_filter({"version": 0.0})) == {f"d{i}" for i in range(50)} - {"d3"}  # 0.0 == 0
        assert s.match(check_filter({"version": False})) == set()  # booleans are not numbers
        s.delete(["d3", "d4", "ghost"])
        assert s.documents(["d3", "d4"]) == {} and "d3" not in s.match(check_filter({"version": 1}))  # forgotten
        s.add(["vec-only"], unit(3, 1))  # the vector API: the document store gets an empty document
        assert s.documents(["vec-only"])["vec-only"] == Document("vec-only", "", "")
    live, stored = agree(folder)
    assert live == stored and {"new", "vec-only"} <= live and not {"d3", "d4"} & live


def test_bad_batches_change_nothing(folder):
    with IndexStore.open(folder, writable=True) as s:
        before, log_size = s.stats(), s._wal.size
        for bad, match in ((["x", "y", "x"], "more than once"), (["a\nb"], "line break"), ([""], "empty")):
            with pytest.raises(DataError, match=match):
                s.add(bad, unit(1, len(bad)))
        with pytest.raises(DataError, match="dimension"):
            s.add(["x"], np.ones((1, 9), np.float32))
        with pytest.raises(DataError, match="NaN"):
            s.add(["x"], np.full((1, DIM), np.nan, np.float32))
        with pytest.raises(DataError, match="flat metadata"):
            s.prepare([{"_id": "x", "text": "t", "metadata": {"nested": {"a": 1}}}])
        with pytest.raises(DataError, match="title and text must be strings"):
            s.prepare([{"_id": "x", "text": 5}])
        with pytest.raises(DataError, match="valid Unicode"):
            s.prepare([{"_id": "x", "text": "lone \ud800 surrogate"}])  # SQLite and the log could not store it
        with pytest.raises(DataError, match="not valid text"):
            s.add(["\udc00"], unit(1, 1))
        assert s.stats() == before and s._wal.size == log_size and "x" not in s.index
    with IndexStore.open(folder) as r, pytest.raises(HCEError, match="read-only"):
        r.prepare([doc(1)])  # refused before anything is encoded


def test_store_compacts_when_tombstones_pile_up(tmp_path):
    folder = make_store(tmp_path / "idx", n=200, compact_ratio=0.25, compact_min_deleted=10)
    with IndexStore.open(folder, writable=True) as s:
        s.delete([f"d{i}" for i in range(40)])  # 20 %: below the ratio
        assert s.index.num_deleted == 40 and s.manifest.generation == 1
        s.delete([f"d{i}" for i in range(40, 80)])  # 40 %: compacted and saved
        assert s.index.num_deleted == 0 and s.index.num_labels == 120 and s.manifest.generation == 2
    live, stored = agree(folder)
    assert live == stored and len(live) == 120


def test_failed_document_write_withdraws_the_log_record(folder, monkeypatch):
    with IndexStore.open(folder, writable=True) as s:
        size = s._wal.size

        def disk_full(*a, **kw):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(DocStore, "write", disk_full)
        with pytest.raises(sqlite3.OperationalError):
            s.add_batch(s.prepare([doc("late")]), unit(4, 1))
        monkeypatch.undo()
        assert s._wal.size == size and "dlate" not in s.index  # nothing happened anywhere
        s.add_batch(s.prepare([doc("ok")]), unit(5, 1))  # and the store is still usable
    live, stored = agree(folder)
    assert live == stored and "dok" in live and "dlate" not in live


def test_failed_graph_write_refuses_further_writes_until_reopened(folder, monkeypatch):
    s = IndexStore.open(folder, writable=True)
    monkeypatch.setattr(Index, "add", lambda *a, **kw: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        s.add_batch(s.prepare([doc("x")]), unit(6, 1))
    monkeypatch.undo()
    with pytest.raises(HCEError, match="reopen"):
        s.delete(["d1"])
    s.close(save=True)  # no save of the inconsistent memory state
    live, stored = agree(folder)  # the log had it: the reopened index and the documents agree, with it
    assert live == stored and "dx" in live


CRASH_BETWEEN = """
import os, signal, sys, numpy as np
from hce_serve.beir import Document
from hce_serve.docstore import DocStore
from hce_serve.index import Index
from hce_serve.store import IndexStore
s = IndexStore.open({folder!r}, writable=True)
s.add_batch(s.prepare([Document("before", "B", "acknowledged")]), np.eye(1, {dim}, 0, np.float32))
print("acked", flush=True)
kill = lambda *a, **kw: os.kill(os.getpid(), signal.SIGKILL)
{patch}
{op}
print("unreachable", flush=True)
"""


ADD_MID = "s.add_batch(s.prepare([Document('mid', 'M', 'logged')]), np.eye(1, {dim}, 1, np.float32))"


@pytest.mark.parametrize("cls,method,op", [
    ("DocStore", "write", ADD_MID),  # logged, in neither store
    ("Index", "add", ADD_MID),  # logged and in SQLite, not in the graph
    ("Index", "delete", "s.delete(['d1'])"),  # logged, in neither store
    ("DocStore", "write", "s.delete(['d1'])"),  # logged and out of the graph, still in SQLite
])
def test_kill_between_the_two_writes_recovers_agreement(folder, cls, method, op):
    """SIGKILL after the log record is on disk but before both stores have the change: the next open
    replays the record into both, so the vector index and the documents hold the same live ids."""
    code = CRASH_BETWEEN.format(folder=str(folder), dim=DIM, patch=f"setattr({cls}, {method!r}, kill)",
                                op=op.format(dim=DIM))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and proc.stdout.split() == ["acked"], proc.stderr
    deleting = "delete" in op
    with IndexStore.open(folder) as r:  # a reader must not write: it keeps the replayed documents in memory
        live = set(r.index.ids())
        assert set(r.documents(live)) == live and r.documents(["before"])["before"].text == "acknowledged"
        assert ("d1" in live) != deleting and ("mid" in live) != deleting
    live, stored = agree(folder)
    assert live == stored and "before" in live and ("mid" in live) != deleting and ("d1" in live) != deleting


WRITER = """
import json, random, sys, numpy as np
from hce_serve.beir import Document
from hce_serve.store import IndexStore
rng, version = random.Random({seed}), {version}
with IndexStore.open({folder!r}, writable=True) as s, open({acks!r}, "a", buffering=1) as out:
    s.autosave_every = 7
    while True:
        ids = list(dict.fromkeys(f"d{{rng.randrange(80)}}" for _ in range(rng.randint(1, 5))))
        if rng.random() < 0.6:
            version += 1
            out.write(json.dumps({{"intent": "add", "ids": ids, "v": version}}) + "\\n")
            vecs = np.random.default_rng(version).standard_normal((len(ids), {dim})).astype(np.float32)
            s.add_batch(s.prepare([Document(i, f"v{{version}}", "t", {{"v": version}}) for i in ids]), vecs)
            out.write(json.dumps({{"ack": "add", "ids": ids, "v": version}}) + "\\n")
        elif rng.random() < 0.9:
            out.write(json.dumps({{"intent": "delete", "ids": ids}}) + "\\n")
            s.delete(ids)
            out.write(json.dumps({{"ack": "delete", "ids": ids}}) + "\\n")
        else:
            s.compact()
"""


def test_random_kill9_cycles_keep_documents_and_vectors_agreeing(folder, tmp_path):
    """A writer killed at random moments: acknowledged writes survive, and both stores hold the same ids."""
    acks, expect, version = tmp_path / "acks.jsonl", {f"d{i}": 0 for i in range(50)}, 0
    rng = random.Random(0)
    for cycle in range(5):
        code = WRITER.format(seed=cycle, version=version, folder=str(folder), acks=str(acks), dim=DIM)
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
        time.sleep(1.0 + rng.random())  # imports take most of the first second; then it writes
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        maybe: dict[str, int | None] = {}
        for line in acks.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line being written at the kill
            version = max(version, rec.get("v", 0))
            if "intent" in rec:
                maybe = dict.fromkeys(rec["ids"], rec.get("v"))
            else:
                expect.update(dict.fromkeys(rec["ids"], rec.get("v")) if rec["ack"] == "add" else {})
                for i in rec["ids"] if rec["ack"] == "delete" else []:
                    expect.pop(i, None)
                maybe = {}
        acks.write_text("")
        with IndexStore.open(folder, writable=True) as s:
            live, stored = set(s.index.ids()), s.docs.ids()
            assert live == stored, f"cycle {cycle}: {sorted(live ^ stored)[:5]}"
            got = {i: (d.metadata or {}).get("v", 0) for i, d in s.documents(live).items()}
        for i in set(expect) | set(got):
            allowed = {expect.get(i)} | ({maybe[i]} if i in maybe else set())
            assert got.get(i) in allowed, f"cycle {cycle}: {i} holds {got.get(i)}, expected one of {allowed}"
        expect = got
    assert version > 20  # the writers really wrote between kills (each cycle runs ~1 s past its imports)


def test_reader_is_not_fooled_by_missing_or_foreign_document_store(folder, tmp_path):
    (folder / DOCS_NAME).rename(tmp_path / "aside.sqlite")
    with pytest.raises(FormatError, match="missing"):
        IndexStore.open(folder)
    conn = sqlite3.connect(folder / DOCS_NAME)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(FormatError, match="not an HCE document store"):
        IndexStore.open(folder)
    (folder / DOCS_NAME).unlink()
    (tmp_path / "aside.sqlite").rename(folder / DOCS_NAME)
    conn = sqlite3.connect(folder / DOCS_NAME)
    conn.execute("DELETE FROM docs WHERE id = 'd7'")  # changed behind the index's back
    conn.commit()
    conn.close()
    with pytest.raises(FormatError, match="49 documents but the index has 50"):
        IndexStore.open(folder, writable=True)


OLD = Path(__file__).parent / "data" / "index-v0.1.0"


def test_old_format_index_folder_still_opens(tmp_path):
    """A folder written by hce 0.1.0 (manifest version 1, no document store, a log to replay) opens, takes
    writes and stays version 1 (see tests/data/README.md for how it was made)."""
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    vecs = np.load(OLD.parent / "index-v0.1.0-vectors.npy")
    with IndexStore.open(folder) as s:
        assert s.docs is None and s.pending == 2
        assert sorted(s.index.ids(), key=lambda i: int(i[1:])) == [f"d{i}" for i in range(21) if i not in (3, 5)]
        np.testing.assert_allclose(s.index.get_vectors(["d20", "d1"]), vecs[20:22], atol=1e-6)  # replayed adds
        assert s.index.leaf_of("d7") == 7 % 3 + 1 and s.index.leaf_of("d20") == 2
        assert s.index.search(vecs[8:9], 1)[0][0][0] == "d8"
    with IndexStore.open(folder, writable=True) as s:
        s.delete(["d8"])
        s.save()
    m = json.loads((folder / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["generation"] == 3
    with IndexStore.open(folder) as s:
        assert "d8" not in s.index and len(s.index) == 18
    assert not os.path.exists(folder / wal_name(2))


def test_engine_opens_old_folder_without_onnxruntime(tmp_path):
    """delete, stats and get never load the encoder (here: the old folder's encoder has no graph at all)."""
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    code = textwrap.dedent(f"""
        import sys
        from hce_serve import Engine, DataError
        with Engine.open({str(folder)!r}, writable=True) as e:
            assert e.delete(["d2", "nope"]).missing == ["nope"] and e.stats()["live"] == 18
            assert not e.stats()["stores_documents"]
            try:
                e.get("d1")
            except DataError as err:
                assert "no documents" in str(err)
            else:
                raise AssertionError("get on an ids-only index")
        print(sorted(m for m in ("onnxruntime", "tokenizers") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
