"""The ivf-sq8 index kind: recall against exact search, training as the corpus grows, deletes, upserts and
slot reuse, filters, compaction, and folders that save, reopen (with the log) and refuse a damaged file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hce_serve import defaults
from hce_serve.errors import ConfigError, FormatError
from hce_serve.folder.store import IndexStore
from hce_serve.index.exact import recall_at_k, topk_inner_product
from hce_serve.index.index import Index
from hce_serve.options import EngineOptions, IndexParams

pytest.importorskip("faiss")

IVF = dict(kind="ivf-sq8", exact_threshold=0)


def clustered(seed: int, n: int, d: int = 16, centres: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = (c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make(n: int = 3000, **params) -> tuple[Index, np.ndarray, list[str]]:
    vecs = clustered(0, n)
    ids = [f"d{i}" for i in range(n)]
    idx = Index(16, IndexParams(**{**IVF, **params}), capacity=64)
    for start in range(0, n, 500):  # in batches, as a build adds them: the cells are relearnt as it grows
        idx.add(ids[start : start + 500], vecs[start : start + 500])
    return idx, vecs, ids


def rows(hits: list[list[tuple[str, float]]]) -> np.ndarray:
    return np.array([[int(h[0][1:]) for h in row] for row in hits])


def test_recall_vs_exact_and_scores_are_exact_inner_products():
    idx, vecs, _ = make()
    assert idx._ann.ready and idx._ann.trained_on >= 1500  # relearnt after the corpus doubled past 500
    assert idx._ann.ivf.nlist == int(round(np.sqrt(idx._ann.trained_on)))
    q = clustered(1, 200)
    _, exact = topk_inner_product(vecs, q, 10)
    hits = idx.search(q, 10, ef=8)
    assert recall_at_k(rows(hits), exact) >= 0.97
    assert recall_at_k(rows(idx.search(q, 10, ef=64)), exact) >= recall_at_k(rows(idx.search(q, 10, ef=1)), exact)
    first = hits[0]
    assert [s for _, s in first] == sorted((s for _, s in first), reverse=True)
    assert first[0][1] == pytest.approx(float(vecs[int(first[0][0][1:])] @ q[0]), abs=1e-5)  # re-ranked on fp32


def test_threads_split_a_lone_query_over_its_cells_with_the_same_hits():
    idx, _, _ = make()
    q = clustered(1, 6)
    one = [idx.search(q[i : i + 1], 10, ef=8, num_threads=1)[0] for i in range(6)]
    assert idx._ann.ivf.parallel_mode == 0  # one thread: nothing to split
    two = [idx.search(q[i : i + 1], 10, ef=8, num_threads=2)[0] for i in range(6)]
    assert idx._ann.ivf.parallel_mode == 1  # a lone query on 2 threads: its cells are split between them
    assert two == one
    assert idx.search(q, 10, ef=8, num_threads=2) == one  # 6 queries on 2 threads: split by query, same hits
    assert idx._ann.ivf.parallel_mode == 0


def test_many_cells_are_found_through_a_graph_and_survive_a_save(tmp_path):
    import faiss

    from hce_serve.index.ivf import HNSW_CELLS

    n = HNSW_CELLS * 40  # enough points for HNSW_CELLS cells
    vecs = clustered(9, n, centres=400)
    idx = Index(16, IndexParams(**{**IVF, "nlist": HNSW_CELLS}), capacity=n)
    with idx.bulk_load():
        idx.add([f"d{i}" for i in range(n)], vecs)
    assert isinstance(faiss.downcast_index(idx._ann.ivf.quantizer), faiss.IndexHNSWFlat)
    q = clustered(10, 100, centres=400)
    _, exact = topk_inner_product(vecs, q, 10)
    assert recall_at_k(rows(idx.search(q, 10, ef=32)), exact) >= 0.95
    folder = tmp_path / "many"
    IndexStore.create(folder, idx, None)
    with IndexStore.open(folder) as s:
        assert s.index.stats()["cells"] == HNSW_CELLS and s.index.search(q, 10, ef=32) == idx.search(q, 10, ef=32)


def test_small_index_is_exact_until_trained():
    idx = Index(16, IndexParams(kind="ivf-sq8", exact_threshold=1000), capacity=16)
    vecs = clustered(2, 800)
    idx.add([f"d{i}" for i in range(800)], vecs)
    assert not idx._ann.ready  # below the exact threshold: no cells yet, searched exactly
    _, exact = topk_inner_product(vecs, vecs[:5], 3)
    assert rows(idx.search(vecs[:5], 3)).tolist() == exact.tolist()
    assert rows(idx.search(vecs[:5], 3, exact=False)).tolist() == exact.tolist()  # no cells to scan: exact anyway
    idx.add([f"e{i}" for i in range(400)], clustered(3, 400))
    assert idx._ann.ready and idx._ann.ivf.ntotal == 1200


def test_bulk_load_learns_once_from_everything():
    vecs = clustered(7, 3000)
    idx = Index(16, IndexParams(**IVF), capacity=16)
    with idx.bulk_load():
        for start in range(0, 3000, 500):
            idx.add([f"d{i}" for i in range(start, start + 500)], vecs[start : start + 500])
            assert not idx._ann.ready  # nothing learnt mid-load: searches scan exactly
    assert idx._ann.trained_on == 3000 and idx._ann.ivf.ntotal == 3000
    assert idx._ann.ivf.nlist == int(round(np.sqrt(3000)))
    with pytest.raises(RuntimeError), idx.bulk_load():  # a load that fails learns nothing more
        idx.add(["late"], vecs[:1])
        raise RuntimeError("encoder died")
    assert idx._ann.trained_on == 3000 and idx._ann.ivf.ntotal == 3001  # a trained index keeps encoding adds


def test_delete_upsert_and_slot_reuse():
    idx, vecs, ids = make(2000)
    q = vecs[:20]
    gone = [f"d{i}" for i in range(10)]
    idx.delete(gone)
    assert idx._ann.ivf.ntotal == 1990
    assert not set(gone) & {h[0] for row in idx.search(q, 50, ef=64) for h in row}
    labels_before = idx.num_labels
    idx.add(["new"], vecs[500:501])  # reuses a free label
    assert idx.num_labels == labels_before and idx._ann.ivf.ntotal == 1991
    assert idx.search(vecs[500:501], 2, ef=64)[0][0][1] == pytest.approx(1.0, abs=1e-5)
    moved = -vecs[600]  # upsert d600 to the opposite direction: its old code must be gone
    idx.add(["d600"], moved[None])
    assert idx._ann.ivf.ntotal == 1991
    assert idx.search(moved[None], 1, ef=64)[0][0] == ("d600", pytest.approx(1.0, abs=1e-5))
    assert "d600" not in {h[0] for h in idx.search(vecs[600:601], 20, ef=64)[0]}
    np.testing.assert_array_equal(idx.get_vectors(["d600"])[0], moved)


def test_filters_match_exact_filtered_search():
    idx, vecs, ids = make(3000)
    allowed = [f"d{i}" for i in range(0, 3000, 3)]  # 1,000 allowed: above the exact-scan crossover
    q = clustered(4, 50)
    hits = idx.search(q, 10, ef=64, allow_ids=allowed)
    assert all(int(h[0][1:]) % 3 == 0 for row in hits for h in row)
    _, exact = topk_inner_product(vecs[::3], q, 10)
    assert recall_at_k(rows(hits) // 3, exact) >= 0.97
    few = [f"d{i}" for i in range(0, 3000, 50)]  # 60 allowed, spread over cells: one cell cannot hold 10 of them
    got = idx.search(q, 10, ef=1, allow_ids=few, exact=False)
    assert all(len(row) == 10 and {h[0] for h in row} <= set(few) for row in got)  # the scan widened to fill k


def test_compaction_keeps_answers():
    idx, vecs, ids = make(2000)
    idx.delete([f"d{i}" for i in range(0, 2000, 2)])
    q = clustered(5, 30)
    before = rows(idx.search(q, 5, ef=64))
    assert idx.compact() == 1000
    assert idx.num_labels == 1000 and idx._ann.ivf.ntotal == 1000
    after = rows(idx.search(q, 5, ef=64))
    assert (before == after).mean() >= 0.95


def test_params_are_checked_and_hnsw_manifests_keep_their_old_keys():
    with pytest.raises(ConfigError, match="kind"):
        IndexParams(kind="annoy")
    with pytest.raises(ConfigError, match="refine"):
        IndexParams(kind="ivf-sq8", refine=0)
    assert "kind" not in IndexParams().to_dict() and "nlist" not in IndexParams().to_dict()
    assert IndexParams(kind="ivf-sq8", nlist=64).to_dict()["nlist"] == 64


def test_python_build_of_an_ivf_index_scans_the_ivf_default_cells(tiny_export, tiny_beir, tmp_path):
    """``Engine.build(..., IndexParams(kind="ivf-sq8"))`` from Python: the default breadth is the IVF's nprobe,
    not HNSW's beam of 100 (which would scan a hundred cells a query)."""
    from hce_serve.engine import Engine

    ivf, hnsw = EngineOptions.default_ef("ivf-sq8"), EngineOptions.default_ef("hnsw")
    assert IndexParams(kind="ivf-sq8").ef_search == ivf != hnsw
    assert IndexParams().ef_search == EngineOptions.default_ef("hnsw") and IndexParams(ef_search=7).ef_search == 7
    stats = Engine.build(tiny_export, tiny_beir / "corpus.jsonl", tmp_path / "ivf", IndexParams(kind="ivf-sq8"))
    assert (stats["kind"], stats["ef_search"]) == ("ivf-sq8", EngineOptions.default_ef("ivf-sq8"))
    with Engine.open(tmp_path / "ivf") as eng:  # and it is what the manifest keeps
        assert (eng.stats()["kind"], eng.stats()["ef_search"]) == ("ivf-sq8", EngineOptions.default_ef("ivf-sq8"))


def test_folder_round_trip_with_log_and_damaged_file(tmp_path):
    idx, vecs, ids = make(1500, nlist=24)
    folder = tmp_path / "idx"
    IndexStore.create(folder, idx, None)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["extra"]["params"]["kind"] == "ivf-sq8"
    assert any(f.endswith("/ivf.faiss") for f in manifest["files"]) and (folder / "vectors.npy").is_file()
    q = clustered(6, 20)
    with IndexStore.open(folder, writable=True) as s:  # changes go to the log, replayed on the next open
        s.delete(["d1", "d2"])
        s.add(["x"], -vecs[3:4])
        expected = s.index.search(q, 10)
    with IndexStore.open(folder) as s:
        assert s.index.params.kind == "ivf-sq8" and s.index._ann.ivf.nlist == 24
        assert s.index.search(q, 10) == expected and "d1" not in s.index
    with IndexStore.open(folder, writable=True) as s:
        s.save(force=True)
    with IndexStore.open(folder) as s:
        assert s.index.search(q, 10) == expected
        index = s.index
    cap = index.capacity
    index.add([f"n{i}" for i in range(cap - 1499 + 50)], clustered(8, cap - 1499 + 50))  # grows the loaded table
    assert index.capacity > cap
    np.testing.assert_array_equal(index.get_vectors(["d0", "d1499"]), vecs[[0, 1499]])
    gen = json.loads((folder / "manifest.json").read_text())["extra"]["data_dir"]
    damaged = folder / gen / "ivf.faiss"
    damaged.write_bytes(b"\0" * damaged.stat().st_size)  # same size: only faiss' own read can tell
    with pytest.raises(FormatError, match="ivf.faiss: faiss cannot read it"):
        IndexStore.open(folder, checksums=False)


def test_cli_builds_searches_and_changes_an_ivf_folder(tiny_export, tiny_beir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from hce_serve.cli import main

    def run(*args: object, code: int = 0) -> str:
        res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code == code, res.output
        return res.stdout if code == 0 else res.output

    base = [json.loads(line) for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    rows = [{**d, "_id": f"{d['_id']}-{r}", "text": f"{d['text']} {' '.join(base[(i + r) % 64]['text'].split()[:3])}"}
            for r in range(5) for i, d in enumerate(base)]  # 320 documents: enough to learn cells
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in rows))
    idx = tmp_path / "idx"
    run("index", "build", "--model", tiny_export, "--corpus", corpus, "--index", idx, "--index-type", "ivf-sq8",
        "--nlist", "8", "--exact-threshold", "0")
    stats = json.loads(run("index", "stats", "--index", idx))
    assert (stats["kind"], stats["nlist"], stats["ef_search"], stats["live"]) == ("ivf-sq8", 8, defaults.NPROBE, 320)
    assert (stats["cells"], stats["trained_on"]) == (8, 320)
    query = rows[7]["title"] + " " + rows[7]["text"]
    narrow = json.loads(run("search", "--index", idx, query, "--k", "5", "--json", "--ef", "1"))["hits"]
    wide = json.loads(run("search", "--index", idx, query, "--k", "5", "--json", "--ef", "8"))["hits"]
    assert len(narrow) == len(wide) == 5 and wide[0]["id"] == rows[7]["_id"] and wide[0]["text"] == rows[7]["text"]
    with IndexStore.open(idx) as s:  # --ef 8 scans every cell: the exact answer
        exact = s.index.search(s.index.get_vectors([rows[7]["_id"]]), 5, exact=True)[0]
    assert [h["id"] for h in wide] == [i for i, _ in exact]
    from hce_serve.engine import Engine

    for threads, mode in ((2, 1), (None, 0)):  # a request's threads (serve --threads) scan its cells too
        with Engine.open(idx, threads=threads) as eng:
            assert [h.id for h in eng.search(query, k=5, ef=8)] == [h["id"] for h in wide]
            assert eng.store.index._ann.ivf.parallel_mode == mode
    assert json.loads(run("index", "delete", "--index", idx, "--id", rows[7]["_id"]))["live"] == 319
    again = json.loads(run("search", "--index", idx, query, "--k", "5", "--json", "--ef", "8"))["hits"]
    assert rows[7]["_id"] not in {h["id"] for h in again}
    assert json.loads(run("index", "add", "--index", idx, "--corpus", corpus))["added"] == 1
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # the extra is missing: one line, exit 1
    out = run("index", "build", "--model", tiny_export, "--corpus", corpus, "--index", tmp_path / "b",
              "--index-type", "ivf-sq8", code=1)
    assert "pip install 'hce[ivf]'" in out and len(out.strip().splitlines()) == 1
