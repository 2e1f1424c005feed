"""IndexStore with stored documents: one check per batch, one writer lock, the compaction policy, and the
durability rule shared by vectors and documents (after kill -9 the live ids of both are the same set)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hce_serve.checks import check_filter
from hce_serve.documents import Document
from hce_serve.errors import DataError, FormatError, HCEError
from hce_serve.folder.docstore import DOCS_NAME, DocStore
from hce_serve.folder.store import IndexStore
from hce_serve.folder.wal import wal_name
from hce_serve.index.index import Index
from hce_serve.options import IndexParams

pytest.importorskip("hnswlib")

from store_fixtures import DIM, agree, doc, folder, make_store, unit  # noqa: E402, F401


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
        assert s.docs is None and s.get(["a"]) == {}
        with pytest.raises(DataError, match="no documents"):
            s.search(unit(1, 1), 1, filter=check_filter({"x": 1}))


def test_documents_follow_adds_replaces_and_deletes(folder):
    with IndexStore.open(folder, writable=True) as s:
        batch = s.prepare([{"_id": "new", "title": "T", "text": "body", "metadata": {"lang": "en", "tags": ["a", "b"]}},
                           doc(3, version=1)])
        assert s.add(batch, unit(2, 2)).added == 1
        assert s.get(["new"])["new"] == Document("new", "T", "body", {"lang": "en", "tags": ["a", "b"]})
        assert s.get(["d3"])["d3"].metadata["version"] == 1
        assert s.docs.match(check_filter({"version": 1})) == {"d3"}  # the replaced value left the filter index
        assert s.docs.match(check_filter({"version": 1})) is s.docs.match(check_filter({"version": [1]}))  # remembered
        assert s.docs.match(check_filter({"tags": "b", "lang": ["en", "fr"]})) == {"new"}
        assert s.docs.match(check_filter({"version": 0.0})) == {f"d{i}" for i in range(50)} - {"d3"}  # 0.0 == 0
        assert s.docs.match(check_filter({"version": False})) == set()  # booleans are not numbers
        s.delete(["d3", "d4", "ghost"])
        assert s.get(["d3", "d4"]) == {} and "d3" not in s.docs.match(check_filter({"version": 1}))  # forgotten
        s.add(["vec-only"], unit(3, 1))  # the vector API: the document store gets an empty document
        assert s.get(["vec-only"])["vec-only"] == Document("vec-only", "", "")
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
            s.add(s.prepare([doc("late")]), unit(4, 1))
        monkeypatch.undo()
        assert s._wal.size == size and "dlate" not in s.index  # nothing happened anywhere
        s.add(s.prepare([doc("ok")]), unit(5, 1))  # and the store is still usable
    live, stored = agree(folder)
    assert live == stored and "dok" in live and "dlate" not in live


def test_failed_graph_write_refuses_further_writes_until_reopened(folder, monkeypatch):
    s = IndexStore.open(folder, writable=True)
    monkeypatch.setattr(Index, "add", lambda *a, **kw: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        s.add(s.prepare([doc("x")]), unit(6, 1))
    monkeypatch.undo()
    with pytest.raises(HCEError, match="reopen"):
        s.delete(["d1"])
    s.close(save=True)  # no save of the inconsistent memory state
    live, stored = agree(folder)  # the log had it: the reopened index and the documents agree, with it
    assert live == stored and "dx" in live




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
