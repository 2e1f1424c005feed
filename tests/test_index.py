"""Index over hnswlib: recall against exact search, deletes, upserts, slot reuse, growth, concurrency,
per-query ef, and filters against brute force."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hce_serve.index.exact import recall_at_k, topk_inner_product
from hce_serve.index.index import Index
from hce_serve.options import IndexParams

pytest.importorskip("hnswlib")

HNSW_ONLY = dict(exact_threshold=0)  # force the graph path in tests that are about the graph


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make(n: int = 500, d: int = 16, seed: int = 0, **params) -> tuple[Index, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    vecs = unit(rng, n, d)
    ids = [f"d{i}" for i in range(n)]
    idx = Index(d, IndexParams(**params), capacity=64)
    idx.add(ids, vecs)
    return idx, vecs, ids


def test_recall_vs_exact_at_default_ef():
    idx, vecs, ids = make(5000, 32, **HNSW_ONLY)
    q = unit(np.random.default_rng(1), 200, 32)
    _, exact_rows = topk_inner_product(vecs, q, 10)
    hits = idx.search(q, 10)
    approx = np.array([[int(h[0][1:]) for h in row] for row in hits])
    assert recall_at_k(approx, exact_rows) >= 0.99
    # scores are inner products, best first
    s = [h[1] for h in hits[0]]
    assert s == sorted(s, reverse=True)
    assert s[0] == pytest.approx(float(q[0] @ vecs[int(hits[0][0][0][1:])]), abs=1e-5)


def test_exact_path_matches_numpy():
    idx, vecs, ids = make(300, 8)  # under the default exact threshold
    q = unit(np.random.default_rng(2), 5, 8)
    _, rows = topk_inner_product(vecs, q, 7)
    got = idx.search(q, 7)
    assert [[ids[r] for r in row] for row in rows] == [[h[0] for h in row] for row in got]


@pytest.mark.parametrize("exact", [True, False])
def test_deleted_ids_never_returned_and_k_clamped(exact):
    idx, vecs, ids = make(400, 16, compact_min_deleted=10**9)
    gone = ids[::3]
    res = idx.delete(gone + ["nope"])
    assert res.missing == ["nope"] and len(res.deleted) == len(gone)
    assert len(idx) == 400 - len(gone) and idx.num_deleted == len(gone)
    # query with the deleted vectors themselves: the closest match would be the deleted doc
    hits = idx.search(vecs[::3], 1000, exact=exact)
    gone_set = set(gone)
    for row in hits:
        assert len(row) == len(idx)  # k clamped to the live count, never an error
        assert not gone_set & {h[0] for h in row}


def test_delete_everything_then_search_returns_empty():
    idx, vecs, ids = make(50, 8, compact_min_deleted=10**9)
    idx.delete(ids)
    assert idx.search(vecs[:2], 5) == [[], []]
    with pytest.raises(ValueError):
        idx.search(vecs[:1], 0)


def test_upsert_replaces_vector_keeps_label_count():
    idx, vecs, ids = make(200, 8, **HNSW_ONLY)
    new = -vecs[5]
    res = idx.add(["d5"], new[None])
    assert (res.added, res.replaced) == (0, 1)
    assert idx.num_labels == 200 and len(idx) == 200
    np.testing.assert_allclose(idx.get_vectors(["d5"])[0], new, atol=1e-6)
    top = idx.search(new[None], 1)[0][0]
    assert top[0] == "d5" and top[1] == pytest.approx(1.0, abs=1e-4)


def test_freed_slots_are_reused():
    idx, vecs, ids = make(300, 8, compact_min_deleted=10**9, **HNSW_ONLY)
    cap = idx.capacity
    idx.delete(ids[:100])
    more = unit(np.random.default_rng(9), 100, 8)
    idx.add([f"n{i}" for i in range(100)], more)
    assert idx.num_labels == 300 and idx.num_deleted == 0 and idx.capacity == cap
    # re-added slots are searchable with their new vectors
    hits = idx.search(more[:20], 1)
    assert [h[0][0] for h in hits] == [f"n{i}" for i in range(20)]


def test_capacity_grows():
    idx = Index(4, IndexParams(**HNSW_ONLY), capacity=16)
    rng = np.random.default_rng(3)
    for b in range(5):
        idx.add([f"b{b}-{i}" for i in range(40)], unit(rng, 40, 4))
    assert len(idx) == 200 and idx.capacity >= 200


def test_unchecked_batch_is_refused_before_the_graph_changes():
    """Input checks are the store's (test_store.py); the index still never breaks its id <-> label bijection."""
    idx, vecs, ids = make(20, 8)
    before = idx.stats()
    with pytest.raises(ValueError, match="unchecked batch"):
        idx.add(["x", "y", "x"], vecs[:3])
    with pytest.raises(ValueError):
        idx.add(["x"], np.ones((1, 9), np.float32))
    assert idx.stats() == before and "x" not in idx


def test_compact_drops_tombstones_and_keeps_results():
    idx, vecs, ids = make(600, 16, **HNSW_ONLY, compact_min_deleted=10**9)
    idx.delete(ids[:300])
    q = unit(np.random.default_rng(4), 20, 16)
    before = idx.search(q, 5, exact=True)
    assert idx.compact() == 300
    assert idx.num_labels == 300 and idx.num_deleted == 0
    after = idx.search(q, 5, exact=True)
    assert [[h[0] for h in r] for r in after] == [[h[0] for h in r] for r in before]
    assert not set(ids[:300]) & {h[0] for r in idx.search(q, 50) for h in r}


def test_delete_never_compacts_by_itself():
    """Compaction is the store's policy (test_store.py); the index only reports that it is due."""
    idx, vecs, ids = make(200, 8, compact_ratio=0.25, compact_min_deleted=10)
    idx.delete(ids[:80])
    assert idx.num_deleted == 80 and idx.needs_compaction()
    idx.compact()
    assert idx.num_deleted == 0 and idx.num_labels == 120 and not idx.needs_compaction()


def test_concurrent_search_while_adding_and_deleting():
    idx, vecs, ids = make(2000, 16, **HNSW_ONLY, compact_min_deleted=10**9)
    errors: list[BaseException] = []
    deleted: set[str] = set()
    stop = threading.Event()
    q = unit(np.random.default_rng(5), 50, 16)

    def reader() -> None:
        try:
            while not stop.is_set():
                already_gone = set(deleted)  # deleted before this search began: must never appear
                for row in idx.search(q, 20):
                    bad = {h[0] for h in row} & already_gone
                    if bad:
                        errors.append(AssertionError(f"deleted ids returned: {sorted(bad)[:3]}"))
        except BaseException as e:  # noqa: BLE001 - the test reports any failure of a reader thread
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(6)
    for b in range(20):
        idx.add([f"new{b}-{i}" for i in range(50)], unit(rng, 50, 16))
        batch = ids[b * 50 : (b + 1) * 50]
        idx.delete(batch)
        deleted.update(batch)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    # after the writers are done, no deleted id comes back
    assert not deleted & {h[0] for row in idx.search(q, 100) for h in row}
    assert len(idx) == 2000


def test_hnswlib_failure_falls_back_to_exact(monkeypatch):
    idx, vecs, ids = make(300, 8, **HNSW_ONLY)
    expected = idx.search(vecs[:3], 5, exact=True)

    class Failing:
        def __init__(self, inner):
            self.inner = inner

        def search(self, *a, **kw):
            raise RuntimeError("Cannot return the results in a contiguous 2D array. Probably ef or M is too small")

        def __getattr__(self, name):
            return getattr(self.inner, name)

    idx._ann = Failing(idx._ann)
    assert idx.search(vecs[:3], 5) == expected


def test_per_query_ef_is_hnswlib_ef_without_shared_state():
    """search(ef=e) answers exactly what hnswlib answers after set_ef(e): the same beam, max(ef, k)."""
    idx, vecs, ids = make(3000, 16, **HNSW_ONLY)
    q = unit(np.random.default_rng(7), 50, 16)
    for ef in (10, 64, 300):
        got = idx.search(q, 10, ef=ef)
        idx._ann.hnsw.set_ef(ef)
        labels, _ = idx._ann.hnsw.knn_query(q, k=10)
        idx._ann.hnsw.set_ef(1)
        assert [[h[0] for h in row] for row in got] == [[ids[lab] for lab in row] for row in labels.tolist()]
    _, exact = topk_inner_product(vecs, q, 10)
    rec = {ef: recall_at_k(np.array([[int(h[0][1:]) for h in row] for row in idx.search(q, 10, ef=ef)]), exact)
           for ef in (10, 300)}
    assert rec[300] >= 0.99 and rec[300] >= rec[10]
    assert idx.search(q, 10) == idx.search(q, 10, ef=idx.params.ef_search)  # the default is the index's ef


def filtered_exact(vecs: np.ndarray, q: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    rows = np.flatnonzero(allowed)
    _, top = topk_inner_product(vecs[rows], q, k)
    return rows[top]  # (q, k) labels of the exact filtered top-k


@pytest.mark.parametrize("selectivity", [0.1, 0.3])
def test_filter_recall_against_brute_force(selectivity):
    """A filter runs inside the graph search: the top-k of the allowed documents, never a post-filtered one."""
    n, d = 20_000, 32
    idx, vecs, ids = make(n, d, seed=3, **HNSW_ONLY)
    rng = np.random.default_rng(11)
    allowed = rng.random(n) < selectivity
    q = unit(rng, 100, d)
    hits = idx.search(q, 10, allow_ids={ids[i] for i in np.flatnonzero(allowed)}, exact=False)
    got = np.array([[int(h[0][1:]) for h in row] for row in hits])
    assert got.shape == (100, 10) and allowed[got].all()
    assert recall_at_k(got, filtered_exact(vecs, q, allowed, 10)) >= 0.99


def test_selective_filter_is_exact_and_combines_with_leaves():
    n, d = 6000, 16
    rng = np.random.default_rng(5)
    vecs = unit(rng, n, d)
    ids = [f"d{i}" for i in range(n)]
    leaves = rng.integers(0, 20, n).astype(np.int32)
    idx = Index(d, IndexParams(**HNSW_ONLY), capacity=n)
    idx.add(ids, vecs, leaves)
    idx.delete(ids[:100])
    q = unit(rng, 20, d)
    by_id = rng.random(n) < 0.02  # ~120 documents: answered by an exact scan
    hits = idx.search(q, 10, allow_ids={ids[i] for i in np.flatnonzero(by_id)})
    ok = by_id.copy()
    ok[:100] = False  # deleted documents never come back, filter or not
    assert [[int(h[0][1:]) for h in row] for row in hits] == filtered_exact(vecs, q, ok, 10).tolist()
    both = idx.search(q, 5, allow_ids={ids[i] for i in np.flatnonzero(by_id)}, allow_leaves={3, 4, 5})
    ok &= np.isin(leaves, [3, 4, 5])
    assert [[int(h[0][1:]) for h in row] for row in both] == filtered_exact(vecs, q, ok, min(5, ok.sum())).tolist()
    assert idx.search(q, 5, allow_ids=set()) == [[]] * 20  # nothing allowed: nothing found, no error
    assert idx.search(q, 5, allow_ids={"ghost", "d0"}) == [[]] * 20  # unknown and deleted ids match nothing
