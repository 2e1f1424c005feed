"""The lexical side: the analyzer, BM25 against hand-computed scores, updates, merges, files, and fusion."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

pytest.importorskip("Stemmer")

from hce_serve.errors import ConfigError, FormatError  # noqa: E402
from hce_serve.lexical import Analyzer, BM25Params, LexicalIndex  # noqa: E402
from hce_serve.lexical.fusion import fuse, normalise  # noqa: E402

DOCS = [("d1", "Apple banana apple"), ("d2", "banana cherry"), ("d3", "cherry date fig")]


def test_analyzer_drops_stop_words_and_single_characters_and_stems():
    a = Analyzer.create()
    assert a.terms("The running dogs are in a Garden, x") == ["run", "dog", "garden"]
    assert Analyzer.create(language="none", stopwords="none").terms("The dogs") == ["the", "dogs"]
    # the batch path stems like the one-document path
    assert [dict(c) for c in a.counts_many(["Running runs", "dogs"])] == [{"run": 2}, {"dog": 1}]


def test_analyzer_refuses_an_unknown_language_and_stop_list():
    with pytest.raises(ConfigError, match="no Snowball stemmer"):
        Analyzer.create(language="klingon")
    with pytest.raises(ConfigError, match="stop words"):
        Analyzer.create(stopwords="no-such-list")


def test_bm25_matches_the_formula_computed_by_hand():
    idx = LexicalIndex.build(DOCS)
    # N 3, lengths 3 / 2 / 3 (stems appl appl banana | banana cherri | cherri date fig), avgdl 8/3, k1 1.5, b .75
    avgdl = 8 / 3
    idf_apple = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))  # df 1
    idf_banana = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # df 2
    tf_part = lambda tf, dl: tf / (tf + 1.5 * (1 - 0.75 + 0.75 * dl / avgdl))  # noqa: E731
    hits = dict(idx.search("apple banana", k=10))
    assert hits.keys() == {"d1", "d2"}
    assert hits["d1"] == pytest.approx(idf_apple * tf_part(2, 3) + idf_banana * tf_part(1, 3), rel=1e-6)
    assert hits["d2"] == pytest.approx(idf_banana * tf_part(1, 2), rel=1e-6)
    # a repeated query term counts once per repeat
    assert dict(idx.search("banana banana", k=10))["d2"] == pytest.approx(2 * idf_banana * tf_part(1, 2), rel=1e-6)


def test_no_match_and_empty_query_give_nothing():
    idx = LexicalIndex.build(DOCS)
    assert idx.search("zebra", k=5) == []
    assert idx.search("the of and", k=5) == []  # stop words only
    assert idx.search("apple", k=0) == []


def test_replace_and_delete_take_effect_at_once_and_survive_a_merge():
    idx = LexicalIndex.build(DOCS)
    idx.add([("d1", "kiwi only")])  # replaces d1: apple is gone from it
    assert [i for i, _ in idx.search("apple", 5)] == []
    assert [i for i, _ in idx.search("kiwi", 5)] == ["d1"]
    assert idx.delete(["d2", "nope"]) == 1
    assert "d2" not in idx and len(idx) == 2
    assert [i for i, _ in idx.search("banana cherry", 5)] == ["d3"]
    idx.merge()
    assert idx.stats()["dead_rows"] == 0 and idx.stats()["delta_documents"] == 0
    assert [i for i, _ in idx.search("banana cherry kiwi", 5)] == ["d1", "d3"] or \
        [i for i, _ in idx.search("banana cherry kiwi", 5)] == ["d3", "d1"]


def test_after_a_merge_scores_equal_a_fresh_build_of_the_same_documents():
    rnd = random.Random(7)
    words = [f"w{j}" for j in range(40)]
    text = lambda: " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 12)))  # noqa: E731
    live = {f"d{i}": text() for i in range(30)}
    idx = LexicalIndex.build(live.items())
    for step in range(200):
        op = rnd.random()
        if op < 0.5:
            i = f"d{rnd.randint(0, 60)}"
            live[i] = text()
            idx.add([(i, live[i])])
        elif live:
            i = rnd.choice(sorted(live))
            del live[i]
            idx.delete([i])
        if step % 50 == 49:
            idx.merge()
    idx.merge()
    fresh = LexicalIndex.build(live.items())
    for q in ["w1 w2", "w3", "w5 w5 w7 w9", "w39 w0"]:
        a, b = dict(idx.search(q, 100)), dict(fresh.search(q, 100))
        assert a.keys() == b.keys()
        for d in a:
            assert a[d] == pytest.approx(b[d], rel=1e-5)


def test_deleted_rows_never_come_back_before_a_merge():
    idx = LexicalIndex.build([(f"d{i}", "common word") for i in range(50)])
    idx.delete([f"d{i}" for i in range(0, 50, 2)])
    got = [i for i, _ in idx.search("common", 100)]
    assert len(got) == 25 and all(int(i[1:]) % 2 for i in got)


def test_allow_ids_and_accept_restrict_the_hits():
    idx = LexicalIndex.build([(f"d{i}", "alpha " * (i % 5 + 1)) for i in range(40)])
    allowed = {"d3", "d7", "d11", "missing"}
    assert {i for i, _ in idx.search("alpha", 10, allow_ids=allowed)} == {"d3", "d7", "d11"}
    odd = lambda ids: [int(i[1:]) % 2 == 1 for i in ids]  # noqa: E731
    got = idx.search("alpha", 15, accept=odd)
    assert len(got) == 15 and all(int(i[1:]) % 2 for i, _ in got)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


def test_files_round_trip_and_refuse_corruption(tmp_path):
    idx = LexicalIndex.build(DOCS)
    idx.add([("d4", "apple pie")])
    idx.delete(["d2"])
    idx.save(tmp_path)
    back = LexicalIndex.load(tmp_path, Analyzer(), BM25Params())
    assert back.search("apple cherry", 10) == idx.search("apple cherry", 10)
    assert len(back) == 3
    (tmp_path / "lexical-ids.txt").write_text("d1\n")
    with pytest.raises(FormatError, match="lengths"):
        LexicalIndex.load(tmp_path, Analyzer(), BM25Params())
    (tmp_path / "lexical.npz").write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="not a readable"):
        LexicalIndex.load(tmp_path, Analyzer(), BM25Params())


def test_bm25_params_are_checked():
    with pytest.raises(ConfigError):
        BM25Params(k1=-1)
    with pytest.raises(ConfigError):
        BM25Params(b=1.5)


# ---- fusion ---------------------------------------------------------------------------------------------
DENSE = [("a", 0.9), ("b", 0.7), ("c", 0.5)]
LEX = [("c", 12.0), ("d", 6.0), ("a", 3.0)]


def test_rrf_arithmetic():
    out = {f.id: f.score for f in fuse(DENSE, LEX, "rrf", 0.5, k=10, rrf_c=60)}
    assert out["a"] == pytest.approx(0.5 / 61 + 0.5 / 63)
    assert out["c"] == pytest.approx(0.5 / 63 + 0.5 / 61)
    assert out["b"] == pytest.approx(0.5 / 62)
    assert out["d"] == pytest.approx(0.5 / 62)


def test_minmax_arithmetic_and_missing_side_floor():
    res = fuse(DENSE, LEX, "minmax", 0.7, k=10)
    out = {f.id: f.score for f in res}
    # dense: a 1, b .5, c 0; lexical: c 1, d 1/3, a 0
    assert out["a"] == pytest.approx(0.7 * 1 + 0.3 * 0)
    assert out["b"] == pytest.approx(0.7 * 0.5)
    assert out["c"] == pytest.approx(0.3 * 1)
    assert out["d"] == pytest.approx(0.3 * (6 - 3) / 9)
    assert [f.id for f in res] == ["a", "b", "c", "d"]
    a = res[0]
    assert a.dense.rank == 1 and a.lexical.rank == 3 and a.lexical.score == 3.0
    assert res[1].lexical is None and res[1].explain()["lexical"] is None


def test_dbsf_clips_to_three_standard_deviations():
    s = np.array([10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    mu, sd = s.mean(), s.std()
    assert normalise(s, "dbsf")[1] == pytest.approx((1 - (mu - 3 * sd)) / (6 * sd))
    assert normalise(np.array([2.0, 2.0]), "minmax").tolist() == [1.0, 1.0]


def test_alpha_one_and_zero_give_one_side_order():
    assert [f.id for f in fuse(DENSE, LEX, "minmax", 1.0, k=3)] == ["a", "b", "c"]
    assert [f.id for f in fuse(DENSE, LEX, "minmax", 0.0, k=3)] == ["c", "d", "a"]
    assert [f.id for f in fuse(DENSE, [], "rrf", 0.5, k=2)] == ["a", "b"]


def test_pruned_top_k_equals_the_exhaustive_ranking():
    """MaxScore pruning (topk.py) must not change the top k: a Zipf corpus with a delta, deletes and filters."""
    rng = np.random.default_rng(3)
    vocab = np.array([f"t{j}" for j in range(400)])
    p = 1.0 / np.arange(1, 401)
    p /= p.sum()
    docs = [(f"d{i}", " ".join(rng.choice(vocab, size=rng.integers(5, 60), p=p))) for i in range(3000)]
    idx = LexicalIndex.build(docs[:2500])
    idx.add(docs[2500:])  # the delta
    idx.delete([f"d{i}" for i in range(0, 3000, 7)])
    live = {i for i, _ in docs} - {f"d{i}" for i in range(0, 3000, 7)}
    allowed = {f"d{i}" for i in range(1, 3000, 3)}
    for _ in range(40):
        query = " ".join(rng.choice(vocab, size=rng.integers(1, 8), p=p))
        full = idx.scores(query)
        for k, within in ((10, live), (3, live), (10, allowed & live)):
            ref = sorted((float(full[idx.row_of[i]]) for i in within if full[idx.row_of[i]] > 0), reverse=True)[:k]
            got = idx.search(query, k, allow_ids=allowed if within is not live else None)
            assert [s for _, s in got] == pytest.approx(ref, rel=1e-5), (query, k)
            assert all(s == pytest.approx(float(full[idx.row_of[i]]), rel=1e-5) and i in within for i, s in got)


def _both_paths(idx, query, k, allow_ids=None):
    """The compiled kernel's answer and numpy's, for the same query."""
    from hce_serve.lexical import topk

    got = idx.search(query, k, allow_ids=allow_ids)
    saved = topk._kernel
    topk._kernel = None  # as without numba
    try:
        ref = idx.search(query, k, allow_ids=allow_ids)
    finally:
        topk._kernel = saved
    return got, ref


@pytest.mark.parametrize("sliced", [False, True], ids=["whole", "two-slices"])
def test_the_compiled_kernel_gives_numpys_top_k_bit_for_bit(monkeypatch, sliced):
    """Same ids, same float32 scores, same tie order (the earlier row first) across windows, blocks, a delta,
    deleted rows and a filter: a small vocabulary and short documents make many ties and long postings."""
    pytest.importorskip("numba")
    from hce_serve import defaults
    from hce_serve.lexical import topk

    assert topk.compiled()
    monkeypatch.setattr(defaults, "COMPILED_TOPK_MIN_POSTINGS", 0)  # every query through the kernel
    monkeypatch.setattr(defaults, "COMPILED_TOPK_SLICE_MIN_POSTINGS", 0 if sliced else 10**12)  # halves or whole
    calls = []
    from hce_serve.lexical._maxscore import maxscore

    monkeypatch.setattr(topk, "_kernel", lambda *a: calls.append(1) or maxscore(*a))
    rng = np.random.default_rng(11)
    vocab = np.array([f"w{j}" for j in range(60)])
    p = 1.0 / np.arange(1, 61) ** 0.8
    p /= p.sum()
    docs = [(f"d{i}", " ".join(rng.choice(vocab, size=rng.integers(1, 6), p=p))) for i in range(14_000)]
    idx = LexicalIndex.build(docs[:12_000])  # three windows of rows, postings lists of many blocks
    idx.add(docs[12_000:])
    idx.delete([f"d{i}" for i in range(0, 14_000, 5)])
    allowed = {f"d{i}" for i in range(2, 14_000, 3)}
    ties = 0
    for _ in range(60):
        query = " ".join(rng.choice(vocab, size=rng.integers(1, 7), p=p))
        for k, allow in ((1, None), (10, None), (100, None), (10, allowed), (20_000, None)):
            got, ref = _both_paths(idx, query, k, allow)
            assert got == ref, (query, k)
            ties += sum(a[1] == b[1] for a, b in zip(got, got[1:], strict=False))
    # the tie rule was exercised; every query ran the kernel (twice when sliced, once per half)
    assert ties > 100 and len(calls) == 60 * 5 * (2 if sliced else 1)


def test_without_numba_the_numpy_path_answers(monkeypatch):
    from hce_serve.lexical import topk

    monkeypatch.setattr(topk, "_kernel", None)
    idx = LexicalIndex.build(DOCS)
    assert {i for i, _ in idx.search("banana", 5)} == {"d1", "d2"}
    with pytest.raises(RuntimeError, match="numba"):
        topk.top_k(3, np.zeros(3, bool), idx.postings, [], 1)


def test_warming_the_kernel_compiles_it_once():
    pytest.importorskip("numba")
    from hce_serve.lexical import topk

    assert topk.compiled(warm=True) and topk.compiled(warm=True)
    assert topk._kernel.signatures  # compiled (or loaded from numba's cache), not only imported
