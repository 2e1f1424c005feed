"""Tree builder invariants: equal depth, centroids = means, coverage, bounded fan-out, determinism."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from hce_serve.errors import ConfigError, DataError  # noqa: E402
from hce_serve.formats.tree import Tree  # noqa: E402
from hce_train.tree_builder import TreeConfig, balanced_assign, build_tree, leaf_cap, num_levels  # noqa: E402


def _clustered(n: int, dim: int = 24, clusters: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(n: int) -> list[str]:
    return [f"d{i}" for i in range(n)]


@pytest.mark.parametrize(("n", "branching", "leaf"), [(1000, 8, 10), (333, 4, 5), (64, 32, 16)])
def test_invariants(n, branching, leaf):
    x = _clustered(n)
    tree = build_tree(x, _ids(n), TreeConfig(branching=branching, leaf_size=leaf))
    tree.validate()
    # Every document exactly once, all at the same depth, which is the predicted number of levels.
    assert tree.doc_leaf.shape == (n,)
    assert tree.num_levels == num_levels(n, branching, leaf)
    assert np.unique(tree.depth[tree.doc_leaf]).size == 1
    # Bounded fan-out and leaf size.
    kids = np.bincount(tree.parent[1:], minlength=tree.parent.size)
    assert kids.max() <= branching
    assert np.bincount(tree.doc_leaf).max() <= leaf_cap(TreeConfig(branching=branching, leaf_size=leaf))
    # Every internal node's centroid is the mean of the documents below it.
    paths = np.array([tree.path(i) for i in range(n)])  # (n, L)
    for node in range(tree.parent.size):
        below = (paths == node).any(1) if node else np.ones(n, bool)
        np.testing.assert_allclose(tree.centroids[node], x[below].mean(0), atol=1e-5)
    # Leaves are not degenerate: the tree actually splits (mean leaf above half the cap for these sizes).
    assert tree.summary()["mean_leaf_size"] > leaf / 2


def test_clusters_are_kept_together():
    """Documents from one tight cluster share leaves far more often than chance."""
    rng = np.random.default_rng(1)
    centers = np.eye(16, dtype=np.float32)
    labels = np.repeat(np.arange(16), 8)
    x = centers[labels] + 0.05 * rng.standard_normal((128, 16)).astype(np.float32)
    tree = build_tree(x, _ids(128), TreeConfig(branching=16, leaf_size=8))
    purity = np.mean([np.bincount(labels[tree.doc_leaf == leaf]).max() / (tree.doc_leaf == leaf).sum()
                      for leaf in np.unique(tree.doc_leaf)])
    assert purity > 0.75  # chance is about 0.25; k-means local optima cost a little


def test_deterministic_for_a_seed_and_seed_matters():
    x = _clustered(600)
    a = build_tree(x, _ids(600), TreeConfig(branching=6, leaf_size=8, seed=3))
    b = build_tree(x, _ids(600), TreeConfig(branching=6, leaf_size=8, seed=3))
    c = build_tree(x, _ids(600), TreeConfig(branching=6, leaf_size=8, seed=4))
    np.testing.assert_array_equal(a.parent, b.parent)
    np.testing.assert_array_equal(a.doc_leaf, b.doc_leaf)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.doc_leaf, c.doc_leaf)


@pytest.mark.parametrize("n", [1, 5, 16])
def test_corpus_smaller_than_a_leaf(n, tmp_path):
    x = _clustered(n)
    tree = build_tree(x, _ids(n), TreeConfig(branching=4, leaf_size=16))
    assert tree.parent.tolist() == [-1, 0]  # root -> one leaf node holding everything
    assert (tree.doc_leaf == 1).all()
    tree.save(tmp_path)
    loaded = Tree.load(tmp_path)
    np.testing.assert_allclose(loaded.centroids[1], x.mean(0), atol=1e-6)


def test_balanced_assign_respects_capacity_and_preference():
    sims = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9]], np.float32)
    labels = balanced_assign(sims, cap=2)
    assert np.bincount(labels, minlength=2).max() <= 2
    assert labels.tolist() == [0, 0, 1, 1]  # the weakest preference for cluster 0 is the one moved
    with pytest.raises(ConfigError):
        balanced_assign(sims, cap=1)


def test_bad_input():
    with pytest.raises(DataError):
        build_tree(np.zeros((0, 4), np.float32), [])
    with pytest.raises(DataError):
        build_tree(np.full((3, 4), np.nan, np.float32), _ids(3))
    with pytest.raises(ConfigError):
        TreeConfig(branching=1)
