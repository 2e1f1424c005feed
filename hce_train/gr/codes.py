"""The corpus tree as decoding tables: what a constrained decoder may emit after each prefix.

A document's identifier is its path: the nodes from the first level below the root down to its leaf node
(DSI's semantically structured identifiers, here the HCE tree's hierarchical k-means paths), then the
document itself among the documents of that leaf (DSI's atomic identifier, scoped to the leaf).
"""

from __future__ import annotations

import numpy as np

from hce_serve.errors import DataError
from hce_serve.formats.tree import Tree


def _padded(groups: list[np.ndarray]) -> np.ndarray:
    """(len(groups), widest) int64, each row a group, padded with -1."""
    width = max((g.size for g in groups), default=0)
    out = np.full((len(groups), max(width, 1)), -1, np.int64)
    for i, g in enumerate(groups):
        out[i, : g.size] = g
    return out


class TreeCodes:
    """Children per node, documents per leaf node, and each document's path, as padded integer tables.

    ``doc_leaf`` may grow (``add``): a document added after training hangs under the leaf node the tree's
    assignment rule gave it, and becomes one more option of that leaf's last decoding step.
    """

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.levels = tree.num_levels
        if self.levels < 1:
            raise DataError("generative retrieval needs a tree with at least one level below the root")
        self.n_nodes = int(tree.parent.shape[0])
        self.depth = tree.depth.astype(np.int64)  # (nodes,)
        self.parent = tree.parent.astype(np.int64)  # (nodes,)
        leaves = tree.leaf_nodes
        self.is_leaf = np.zeros(self.n_nodes, bool)
        self.is_leaf[leaves] = True
        self.children = _padded(tree.children())  # (nodes, K) node ids, -1 padded
        self.doc_leaf = tree.doc_leaf.astype(np.int64)  # (docs,)
        self._refresh()

    def _refresh(self) -> None:
        order = np.argsort(self.doc_leaf, kind="stable")
        counts = np.bincount(self.doc_leaf, minlength=self.n_nodes)
        self.leaf_docs = _padded(np.split(order, np.cumsum(counts)[:-1]))  # (nodes, D) doc rows, -1 padded
        self.paths = self.path_of(self.doc_leaf)  # (docs, L)

    @property
    def n_docs(self) -> int:
        return int(self.doc_leaf.shape[0])

    def path_of(self, leaf: np.ndarray) -> np.ndarray:
        """(n, L) the nodes from depth 1 down to each of the leaf nodes ``leaf`` (n,)."""
        node = np.asarray(leaf, np.int64).copy()
        out = np.zeros((node.size, self.levels), np.int64)
        for depth in range(self.levels - 1, -1, -1):
            out[:, depth] = node
            node = self.parent[node]
        return out

    def add(self, leaves: np.ndarray) -> np.ndarray:
        """Hang new documents under ``leaves`` (n,) leaf nodes; returns their new document rows."""
        leaves = np.asarray(leaves, np.int64)
        if leaves.size and not self.is_leaf[leaves].all():
            raise DataError("a new document must hang under a leaf node of the tree")
        rows = np.arange(self.n_docs, self.n_docs + leaves.size, dtype=np.int64)
        self.doc_leaf = np.concatenate([self.doc_leaf, leaves])
        self._refresh()
        return rows

    def is_path(self, nodes: list[int]) -> bool:
        """Whether ``nodes`` (depth 1 first) is a path of the tree: each a child of the one before it."""
        prev = 0
        for node in nodes:
            if not 0 < node < self.n_nodes or self.parent[node] != prev:
                return False
            prev = node
        return len(nodes) == self.levels and bool(self.is_leaf[prev])
