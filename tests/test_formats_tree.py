"""tree.npz + tree_doc_ids.txt: invariants, round trip, corruption."""

from __future__ import annotations

import io

import numpy as np
import pytest

from hce_serve.errors import FormatError, VersionError
from hce_serve.formats.tree import TREE_IDS_NAME, TREE_NAME, Tree


def small_tree() -> Tree:
    # root -> {1, 2}; 1 -> {3, 4}; 2 -> {5}; docs under 3, 4, 5 (leaf nodes at depth 2)
    parent = np.array([-1, 0, 0, 1, 1, 2], np.int32)
    doc_leaf = np.array([3, 3, 4, 5, 5], np.int32)
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(5, 4)).astype(np.float32)
    cent = np.zeros((6, 4), np.float32)
    for node, rows in ((3, [0, 1]), (4, [2]), (5, [3, 4]), (1, [0, 1, 2]), (2, [3, 4]), (0, [0, 1, 2, 3, 4])):
        cent[node] = docs[rows].mean(0)
    return Tree(parent, cent, doc_leaf, [f"d{i}" for i in range(5)])


def test_tree_navigation():
    t = small_tree()
    assert t.num_levels == 2
    assert t.path(2) == [1, 4]
    assert [c.tolist() for c in t.children()] == [[1, 2], [3, 4], [5], [], [], []]
    assert t.leaf_members()[3].tolist() == [0, 1]
    s = t.summary()
    assert s == {"levels": 2, "nodes": 6, "docs": 5, "max_branching": 2, "max_leaf_size": 2,
                 "mean_leaf_size": pytest.approx(5 / 3)}


def test_tree_round_trip(tmp_path):
    t = small_tree()
    t.save(tmp_path)
    u = Tree.load(tmp_path)
    assert u.doc_ids == t.doc_ids
    np.testing.assert_array_equal(u.parent, t.parent)
    np.testing.assert_array_equal(u.doc_leaf, t.doc_leaf)
    np.testing.assert_allclose(u.centroids, t.centroids)


def test_tree_rejects_unequal_depth():
    t = small_tree()
    bad_leaf = t.doc_leaf.copy()
    bad_leaf[0] = 1  # node 1 is at depth 1 and has children
    with pytest.raises(FormatError, match="several depths"):
        Tree(t.parent, t.centroids, bad_leaf, t.doc_ids)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("parent", np.array([-1, 0, 0, 1, 1, 7], np.int32), "earlier node"),
        ("parent", np.array([-1, 0, -1, 1, 1, 2], np.int32), "only root"),
        ("parent", np.array([-1, 0, 0, 1, 1, 2], np.int64), "int32"),
        ("doc_leaf", np.array([3, 3, 4, 5, 9], np.int32), "outside"),
        ("doc_ids", ["d0", "d0", "d2", "d3", "d4"], "not unique"),
        ("doc_ids", ["d0"], "doc_leaf has 5 rows but there are 1 doc ids"),
    ],
)
def test_tree_invariants(field, value, message):
    t = small_tree()
    args = dict(parent=t.parent, centroids=t.centroids, doc_leaf=t.doc_leaf, doc_ids=t.doc_ids)
    args[field] = value
    with pytest.raises(FormatError, match=message):
        Tree(**args)


def test_tree_nan_centroid():
    t = small_tree()
    c = t.centroids.copy()
    c[2, 0] = np.nan
    with pytest.raises(FormatError, match="NaN"):
        Tree(t.parent, c, t.doc_leaf, t.doc_ids)


def test_tree_file_corruption(tmp_path):
    t = small_tree()
    t.save(tmp_path)
    npz = tmp_path / TREE_NAME
    raw = npz.read_bytes()
    npz.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError, match="not a readable npz"):
        Tree.load(tmp_path)
    t.save(tmp_path)
    (tmp_path / TREE_IDS_NAME).write_text("d0\nd1\n")
    with pytest.raises(FormatError, match="doc_leaf has 5 rows but there are 2"):
        Tree.load(tmp_path)
    (tmp_path / TREE_IDS_NAME).write_text("d0\nd1")
    with pytest.raises(FormatError, match="truncated"):
        Tree.load(tmp_path)


def test_tree_newer_version_and_pickle_refused(tmp_path):
    t = small_tree()
    t.save(tmp_path)
    buf = io.BytesIO()
    np.savez(buf, format=np.array("hce-tree"), format_version=np.array(9, np.int32), parent=t.parent,
             centroids=t.centroids, doc_leaf=t.doc_leaf)
    (tmp_path / TREE_NAME).write_bytes(buf.getvalue())
    with pytest.raises(VersionError, match="format_version 9"):
        Tree.load(tmp_path)
    buf = io.BytesIO()
    np.savez(buf, format=np.array("hce-tree"), format_version=np.array(1, np.int32),
             parent=np.array([object()], dtype=object), centroids=t.centroids, doc_leaf=t.doc_leaf)
    (tmp_path / TREE_NAME).write_bytes(buf.getvalue())
    with pytest.raises(FormatError):  # object arrays need pickle, which the loader refuses
        Tree.load(tmp_path)


def test_ids_with_newline_refused(tmp_path):
    t = small_tree()
    with pytest.raises(FormatError, match="line break"):
        Tree(t.parent, t.centroids, t.doc_leaf, ["a\nb", "c", "d", "e", "f"]).save(tmp_path)
