"""Negative samplers: tree siblings, random, mined; and the data helpers that feed them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from hce_train.data import Corpus, epoch_batches, pseudo_query_examples  # noqa: E402
from hce_train.negatives import TreeIndex, mine_pools, random_negatives  # noqa: E402
from hce_train.tree_builder import TreeConfig, build_tree  # noqa: E402


@pytest.fixture(scope="module")
def index() -> TreeIndex:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return TreeIndex(build_tree(x, [str(i) for i in range(200)], TreeConfig(branching=6, leaf_size=5)))


def test_siblings_come_from_the_leaf_first_and_never_include_positives(index):
    rng = np.random.default_rng(1)
    tree = index.tree
    for doc in range(0, 200, 7):
        leaf = int(tree.doc_leaf[doc])
        own = set(index.members[leaf].tolist()) - {doc}
        exclude = frozenset({doc, *list(own)[:1]})
        sib = index.siblings(doc, exclude, 3, rng)
        real = [int(s) for s in sib if s >= 0]
        assert not set(real) & exclude
        assert len(set(real)) == len(real)
        n_own = len(own - exclude)
        assert set(real[: min(3, n_own)]) <= own  # leaf-mates before neighbours
        parent = int(tree.parent[leaf])
        cousins = {int(d) for c in index.children[parent] for d in index.members[c]}
        assert set(real) <= cousins  # top-up stays under the same parent
        assert len(real) == min(3, len(cousins - exclude))  # the full S whenever the parent can supply it


def test_centroid_levels_point_at_the_path(index):
    docs = np.array([0, 17, 123])
    levels = index.centroid_levels(docs)
    assert len(levels) == index.tree.num_levels
    for depth, (cand, mask, target) in enumerate(levels):
        for i, doc in enumerate(docs):
            assert cand[i, target[i]] == index.tree.path(int(doc))[depth]
            kids = cand[i][mask[i]]
            assert (index.tree.parent[kids] == index.tree.parent[cand[i, target[i]]]).all()


def test_random_negatives_exclude_positives_and_fit_tiny_corpora():
    rng = np.random.default_rng(0)
    neg = random_negatives(10, 3, frozenset({3, 4}), 5, rng)
    assert not {3, 4} & set(neg.tolist()) and len(set(neg.tolist())) == 5
    tiny = random_negatives(4, 0, frozenset({0, 1}), 5, rng)  # only 2 other documents exist
    assert sorted(tiny[tiny >= 0].tolist()) == [2, 3] and (tiny == -1).sum() == 3


def test_mined_pools_skip_positives_and_start_at_rank_lo():
    d = np.eye(6, dtype=np.float32)
    q = np.array([[6, 5, 4, 3, 2, 1]], np.float32)  # ranks docs 0, 1, 2, ...
    pools = mine_pools(q, d, [frozenset({1})], lo=1, hi=3)
    assert pools.tolist() == [[2, 3]]  # ranking without the positive: 0, 2, 3, 4 ... -> ranks 1..2


def test_pseudo_queries_are_spans_of_their_document():
    corpus = Corpus(["a", "b"], ["one two three four five six seven eight", "short"])
    ex = pseudo_query_examples(corpus, np.random.default_rng(0), 3, 4)
    assert ex.queries[0] in corpus.texts[0] and 3 <= len(ex.queries[0].split()) <= 4
    assert ex.queries[1] == "short"  # a document shorter than the span is used whole
    assert ex.doc_rows.tolist() == [0, 1] and ex.positives == [frozenset({0}), frozenset({1})]


def test_epoch_batches_are_full_seeded_and_cover_everything():
    batches = epoch_batches(10, 4, seed=0, epoch=0)
    assert [b.size for b in batches] == [4, 4, 4]
    assert set(np.concatenate(batches).tolist()) == set(range(10))
    assert all(np.array_equal(a, b) for a, b in zip(batches, epoch_batches(10, 4, 0, 0), strict=True))
    assert not np.array_equal(np.concatenate(batches), np.concatenate(epoch_batches(10, 4, 0, 1)))


def test_the_guard_is_off_by_default_and_binds_every_arm_when_set():
    from hce_serve.errors import ConfigError
    from hce_train.config import TrainConfig

    default = TrainConfig(data="d", out="o", negatives="hce").resolved()
    assert (default.sibling_guard, default.mined_rank_lo) == (0, 0)  # the paper's siblings, mined from rank 0
    for negatives in ("hce", "mined"):
        guarded = TrainConfig(data="d", out="o", negatives=negatives, sibling_guard=10).resolved()
        assert (guarded.sibling_guard, guarded.mined_rank_lo) == (10, 10)  # one knob for both arms
    legacy = TrainConfig(data="d", out="o", negatives="mined", mined_rank_lo=10).resolved()
    assert legacy.sibling_guard == 10  # an explicit mined rank still guards the siblings alike
    with pytest.raises(ConfigError, match="sibling_guard"):
        TrainConfig(data="d", out="o", sibling_guard=50)  # would leave mined no ranks to draw from
