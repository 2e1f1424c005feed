"""Index folder persistence: snapshots, the mutation log, interrupted saves, load checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hce_serve.errors import FormatError, HCEError, VersionError
from hce_serve.folder import snapshot as snapshot_mod
from hce_serve.folder.manifest import IndexManifest
from hce_serve.folder.store import IndexStore
from hce_serve.folder.wal import wal_name
from hce_serve.index.index import Index
from hce_serve.options import IndexParams

pytest.importorskip("hnswlib")

DIM = 8


def unit(seed: int, n: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def folder(tmp_path) -> Path:
    idx = Index(DIM, IndexParams(exact_threshold=0, compact_min_deleted=10**9), capacity=32)
    idx.add([f"d{i}" for i in range(200)], unit(0, 200), leaves=np.arange(200) % 7)
    enc = tmp_path / "export"
    enc.mkdir()
    (enc / "hce_model.json").write_text("{}")
    out = tmp_path / "idx"
    IndexStore.create(out, idx, enc)
    return out


def ids_found(store: IndexStore, q: np.ndarray, k: int = 300) -> set[str]:
    return {h[0] for row in store.index.search(q, k) for h in row}


def crash(store: IndexStore) -> None:
    """What a kill -9 leaves: the log file as written, no save, the writer lock released."""
    store._wal.close()
    os.close(store._lock_fd)
    store._wal = store._lock_fd = None


def test_roundtrip_and_layout(folder):
    names = {p.name for p in folder.iterdir()}
    flat = {"hnsw.bin", "ids.txt", "deleted.npy", "leaves.npy"}  # DESIGN §6 names, linked to the generation
    assert {"manifest.json", "gen-000001", "encoder", ".lock"} | flat >= names - {"wal-000001.log"}
    assert flat <= names
    for name in flat:
        assert (folder / name).read_bytes() == (folder / "gen-000001" / name).read_bytes()
    with IndexStore.open(folder) as s:
        assert len(s.index) == 200 and s.manifest.generation == 1
        assert s.index.leaf_of("d8") == 1
        top = s.index.search(unit(0, 200)[3:4], 1)[0][0]
        assert top[0] == "d3"
    m = IndexManifest.load(folder)
    assert "encoder/hce_model.json" in m.files and "gen-000001/hnsw.bin" in m.files


def test_deletes_survive_save_load_and_compact(folder):
    q = unit(0, 200)
    with IndexStore.open(folder, writable=True) as s:
        s.delete([f"d{i}" for i in range(0, 200, 2)])
        s.save()
    with IndexStore.open(folder, writable=True) as s:
        assert len(s.index) == 100
        assert all(int(i[1:]) % 2 for i in ids_found(s, q))
        s.compact()
        assert s.index.num_labels == 100
    with IndexStore.open(folder) as s:
        found = ids_found(s, q)
        assert len(found) == 100 and all(int(i[1:]) % 2 for i in found)
        assert s.manifest.generation == 3
    assert sorted(p.name for p in folder.glob("gen-*")) == ["gen-000003"]


def test_log_replay_after_crash(folder):
    s = IndexStore.open(folder, writable=True)
    s.add(["new1", "d1"], unit(5, 2))  # one new, one upsert
    s.delete(["d2", "missing"])
    crash(s)
    with IndexStore.open(folder) as r:
        assert "new1" in r.index and "d2" not in r.index and r.pending == 2
        np.testing.assert_allclose(r.index.get_vectors(["d1"])[0], unit(5, 2)[1], atol=1e-6)
        assert "d2" not in ids_found(r, unit(0, 200))
    # a writer folds the log into generation 2 and starts an empty log
    with IndexStore.open(folder, writable=True) as w:
        assert w.save()
    assert not (folder / wal_name(1)).exists()
    with IndexStore.open(folder) as r:
        assert r.pending == 0 and "new1" in r.index and len(r.index) == 200


def test_torn_tail_record_is_ignored(folder):
    s = IndexStore.open(folder, writable=True)
    s.add(["keep"], unit(6, 1))
    s.add(["torn"], unit(7, 1))
    crash(s)
    log = folder / wal_name(1)
    data = log.read_bytes()
    log.write_bytes(data[:-5])  # the last record was cut by the crash
    with IndexStore.open(folder, writable=True) as w:
        assert "keep" in w.index and "torn" not in w.index
        w.add(["after"], unit(8, 1))  # appended after the truncated tail, not behind garbage
        crash(w)
    with IndexStore.open(folder) as r:
        assert "keep" in r.index and "after" in r.index and "torn" not in r.index


def test_corrupt_record_checksum_ends_log(folder):
    s = IndexStore.open(folder, writable=True)
    s.add(["a"], unit(6, 1))
    crash(s)
    log = folder / wal_name(1)
    data = bytearray(log.read_bytes())
    data[-3] ^= 0xFF
    log.write_bytes(bytes(data))
    with IndexStore.open(folder) as r:
        assert "a" not in r.index and len(r.index) == 200


def test_corrupt_record_before_later_records_is_refused(folder):
    s = IndexStore.open(folder, writable=True)
    s.add(["a"], unit(6, 1))
    first_end = s._wal.size
    s.add(["b"], unit(7, 1))
    crash(s)
    log = folder / wal_name(1)
    data = bytearray(log.read_bytes())
    data[first_end - 3] ^= 0xFF  # inside the first record; the acknowledged "b" follows it
    log.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="refusing to drop acknowledged writes"):
        IndexStore.open(folder, writable=True)
    assert log.read_bytes() == bytes(data)  # nothing truncated: the later record is still there to recover


@pytest.mark.parametrize("fail_at", ["write_files", "rename_gen", "manifest"])
def test_interrupted_save_leaves_previous_index(folder, monkeypatch, fail_at):
    s = IndexStore.open(folder, writable=True)
    s.add(["x"], unit(9, 1))
    s.delete(["d0"])
    if fail_at == "write_files":
        def boom(index, f):
            (Path(f)).mkdir(parents=True, exist_ok=True)
            (Path(f) / "hnsw.bin").write_bytes(b"partial")
            raise OSError("disk full")
        monkeypatch.setattr(snapshot_mod, "write_index", boom)
    elif fail_at == "rename_gen":
        monkeypatch.setattr(snapshot_mod.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    else:
        monkeypatch.setattr(IndexManifest, "save", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        s.save()
    monkeypatch.undo()
    crash(s)
    with IndexStore.open(folder, writable=True) as w:  # loads generation 1 + its log
        assert w.manifest.generation == 1
        assert "x" in w.index and "d0" not in w.index and len(w.index) == 200
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-") or p.name == "gen-000002"]
        w.save()
    with IndexStore.open(folder) as r:
        assert r.manifest.generation == 2 and "x" in r.index


def test_load_errors_name_the_problem(folder):
    bad = folder / "gen-000001" / "hnsw.bin"
    data = bytearray(bad.read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="sha256"):
        IndexStore.open(folder)
    bad.write_bytes(bytes(data[:-10]))
    with pytest.raises(FormatError, match="truncated"):
        IndexStore.open(folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VersionError, match="newer"):
        IndexStore.open(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(FormatError, match="no manifest.json"):
        IndexStore.open(folder)


def test_count_mismatch_detected_without_checksums(folder):
    ids = folder / "gen-000001" / "ids.txt"
    ids.write_text(ids.read_text().replace("d5\n", "d4\n"))
    with pytest.raises(FormatError, match="ids.txt"):
        IndexStore.open(folder, checksums=False)


def test_single_writer_and_stale_temps(folder):
    (folder / ".tmp-gen-000009").mkdir()
    (folder / ".tmp-manifest.json.abc").write_text("junk")
    (folder / "gen-000007").mkdir()
    with IndexStore.open(folder, writable=True):
        with pytest.raises(HCEError, match="another process"):
            IndexStore.open(folder, writable=True)
        with IndexStore.open(folder) as reader:  # readers don't need the lock
            assert len(reader.index) == 200
    left = {p.name for p in folder.iterdir()}
    assert not {".tmp-gen-000009", ".tmp-manifest.json.abc", "gen-000007"} & left


def test_create_refuses_existing_index_unless_overwrite(folder):
    idx = Index(DIM, IndexParams())
    idx.add(["only"], unit(1, 1))
    with pytest.raises(HCEError, match="--overwrite"):
        IndexStore.create(folder, idx, None)
    IndexStore.create(folder, idx, None, overwrite=True)
    with IndexStore.open(folder) as s:
        assert s.index.ids() == ["only"]


def test_acknowledged_writes_survive_sigkill(folder):
    """A child process acknowledges adds/deletes on stdout, then is killed with SIGKILL mid-stream."""
    code = textwrap.dedent(f"""
        import os, signal, sys, numpy as np
        from hce_serve.folder.store import IndexStore
        s = IndexStore.open({str(folder)!r}, writable=True)
        rng = np.random.default_rng(0)
        for i in range(30):
            s.add([f"k{{i}}"], rng.standard_normal((1, {DIM})).astype(np.float32))
            if i % 3 == 0:
                s.delete([f"d{{i}}"])
            print(i, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    acked = [int(x) for x in proc.stdout.split()]
    assert acked == list(range(30))
    with IndexStore.open(folder, writable=True) as s:
        for i in acked:
            assert f"k{i}" in s.index
            assert (f"d{i}" in s.index) == (i % 3 != 0)


def test_autosave_every_n_mutations(folder):
    with IndexStore.open(folder, writable=True) as s:
        s.autosave_every = 2
        s.add(["a"], unit(1, 1))
        assert s.manifest.generation == 1 and s.pending == 1
        s.delete(["d1"])
        assert s.manifest.generation == 2 and s.pending == 0
        assert s.index.delete(["never-there"]).missing == ["never-there"]
    with IndexStore.open(folder) as r:
        assert r.pending == 0 and "a" in r.index and "d1" not in r.index
