"""The corpus tree file: ``tree.npz`` + ``tree_doc_ids.txt``.

Node 0 is the root (``parent == -1``); every internal node's centroid is the mean of the document
vectors below it; documents are the leaves and hang under ``doc_leaf[i]``, a node at the lowest internal
depth (the same depth for every document). Arrays only, ``allow_pickle=False``; the format name and
version are stored as 0-d arrays inside the npz.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import DataError, FormatError, VersionError
from . import atomic

TREE_NAME = "tree.npz"
TREE_IDS_NAME = "tree_doc_ids.txt"
TREE_FORMAT = "hce-tree"
TREE_VERSION = 1
NO_LEAF = -1  # the leaf of a free index slot, or of a document in an index without a tree


class Subtree(NamedTuple):
    """A subtree search scope: the node asked for and the leaf nodes (documents' parents) under it."""

    node: int
    leaves: np.ndarray  # (n,) int32


@dataclass(frozen=True, eq=False)
class Tree:
    parent: np.ndarray  # (nodes,) int32, -1 for the root
    centroids: np.ndarray  # (nodes, dim) float32
    doc_leaf: np.ndarray  # (docs,) int32: the node each document hangs under
    doc_ids: list[str]  # row i = document i

    def __post_init__(self) -> None:
        self.validate()

    # ---- invariants -------------------------------------------------------------------------
    def validate(self, where: str = "tree") -> None:
        """Check every invariant serving and training rely on; raise FormatError naming the first broken one."""
        p, c, d = self.parent, self.centroids, self.doc_leaf
        if p.ndim != 1 or p.dtype != np.int32:
            raise FormatError(f"{where}: parent must be a 1-d int32 array, found {p.dtype} {p.shape}")
        n = p.shape[0]
        if n == 0:
            raise FormatError(f"{where}: tree has no nodes")
        if c.ndim != 2 or c.shape[0] != n or c.dtype != np.float32:
            raise FormatError(f"{where}: centroids must be float32 ({n}, dim), found {c.dtype} {c.shape}")
        if d.ndim != 1 or d.dtype != np.int32:
            raise FormatError(f"{where}: doc_leaf must be a 1-d int32 array, found {d.dtype} {d.shape}")
        if d.shape[0] != len(self.doc_ids):
            raise FormatError(f"{where}: doc_leaf has {d.shape[0]:,} rows but there are {len(self.doc_ids):,} doc ids")
        if len(set(self.doc_ids)) != len(self.doc_ids):
            raise FormatError(f"{where}: document ids are not unique")
        if p[0] != -1 or (p[1:] == -1).any():
            raise FormatError(f"{where}: node 0 must be the only root (parent -1)")
        if ((p[1:] < 0) | (p[1:] >= np.arange(1, n))).any():
            raise FormatError(f"{where}: every parent must be an earlier node (topological order)")
        if d.size and ((d < 0) | (d >= n)).any():
            raise FormatError(f"{where}: doc_leaf points outside the {n:,} nodes")
        if not np.isfinite(c).all():
            raise FormatError(f"{where}: centroids contain NaN or infinity")
        depth = self.depth
        if d.size:
            leaf_depths = np.unique(depth[d])
            if leaf_depths.size != 1:
                raise FormatError(f"{where}: documents hang at several depths {leaf_depths.tolist()}; expected one")
            has_child = np.zeros(n, bool)
            has_child[p[1:]] = True
            if has_child[d].any():
                raise FormatError(f"{where}: a document hangs under a node that also has child nodes")

    @cached_property
    def depth(self) -> np.ndarray:
        """Depth of every node (root = 0)."""
        depth = np.zeros(self.parent.shape[0], np.int32)
        for i in range(1, self.parent.shape[0]):  # parents come first, so one pass suffices
            depth[i] = depth[self.parent[i]] + 1
        return depth

    @property
    def num_levels(self) -> int:
        """Number of internal levels below the root that documents' paths cross (leaf-node depth)."""
        return int(self.depth[self.doc_leaf[0]]) if self.doc_leaf.size else 0

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def path(self, doc: int) -> list[int]:
        """Node ids from the first level below the root down to the document's leaf node."""
        return self.ancestors(int(self.doc_leaf[doc]))

    def ancestors(self, node: int) -> list[int]:
        """Node ids from the first level below the root down to ``node`` itself (empty for the root)."""
        out = []
        while node > 0:
            out.append(node)
            node = int(self.parent[node])
        return out[::-1]

    def subtree(self, node: object) -> Subtree:
        """The search scope of ``node`` (a node id from a request: checked): itself and the leaf nodes under it."""
        n = self.parent.shape[0]
        if not isinstance(node, int) or isinstance(node, bool) or not 0 <= node < n:
            raise DataError(f"subtree must be a node id between 0 and {n - 1:,}, found {node!r}")
        return Subtree(node, self.leaves_under(node))

    def children(self) -> list[np.ndarray]:
        """children()[i] = node ids whose parent is i."""
        order = np.argsort(self.parent[1:], kind="stable") + 1
        counts = np.bincount(self.parent[1:], minlength=self.parent.shape[0])
        return np.split(order.astype(np.int32), np.cumsum(counts)[:-1])

    def leaf_members(self) -> list[np.ndarray]:
        """leaf_members()[i] = document rows that hang under node i (empty for non-leaf nodes)."""
        n = self.parent.shape[0]
        order = np.argsort(self.doc_leaf, kind="stable")
        counts = np.bincount(self.doc_leaf, minlength=n)
        return np.split(order.astype(np.int32), np.cumsum(counts)[:-1])

    @cached_property
    def leaf_nodes(self) -> np.ndarray:
        """The nodes documents hang under: every node at the documents' depth (int32, ascending)."""
        if self.doc_leaf.size:
            return np.flatnonzero(self.depth == self.num_levels).astype(np.int32)
        has_child = np.zeros(self.parent.shape[0], bool)  # no documents recorded: the childless nodes
        has_child[self.parent[1:]] = True
        return np.flatnonzero(~has_child).astype(np.int32)

    def leaves_under(self, node: int) -> np.ndarray:
        """Leaf nodes in the subtree of ``node`` (itself if it is one); the caller checks 0 <= node < nodes."""
        inside = np.zeros(self.parent.shape[0], bool)
        inside[node] = True
        for i in range(node + 1, self.parent.shape[0]):  # parents come first: one pass marks the subtree
            inside[i] = inside[self.parent[i]]
        return self.leaf_nodes[inside[self.leaf_nodes]]

    @cached_property
    def _descent(self) -> tuple[list[np.ndarray], np.ndarray]:
        """(children that lead down to a leaf node, per node; unit-norm centroids)."""
        reaches = np.zeros(self.parent.shape[0], bool)
        reaches[self.leaf_nodes] = True
        for i in range(self.parent.shape[0] - 1, 0, -1):  # children come after parents: bottom-up
            reaches[self.parent[i]] |= reaches[i]
        kids = [c[reaches[c]] for c in self.children()]
        norms = np.linalg.norm(self.centroids, axis=1, keepdims=True)
        return kids, self.centroids / np.maximum(norms, 1e-12)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Leaf node (int32, (n,)) for each of ``vectors`` (n, dim): from the root, step to the child whose
        L2-normalised centroid has the highest cosine, down to a leaf node.

        The rule training uses: at every level a query is scored against its node's siblings by cosine to
        their normalised centroids (``hce_train.loss``), and the builder splits top-down. Raw centroids
        would not do: a centroid's norm is its cluster's tightness, so a raw dot product favours tight
        clusters over the nearest one.
        """
        kids, unit = self._descent
        x = np.asarray(vectors, np.float32)  # (n, dim)
        node = np.zeros(x.shape[0], np.int64)  # (n,) current node, all at the root
        for _ in range(self.num_levels or int(self.depth.max())):
            for cur in np.unique(node):
                options = kids[cur]
                if options.size == 0:
                    continue
                rows = np.flatnonzero(node == cur)
                node[rows] = options[np.argmax(x[rows] @ unit[options].T, axis=1)]  # (rows,)
        return node.astype(np.int32)

    def summary(self) -> dict[str, int | float]:
        """Small numbers for the model card: levels, nodes, docs, max branching, max/mean leaf size."""
        child_counts = np.bincount(self.parent[1:], minlength=self.parent.shape[0])
        leaf_sizes = np.bincount(self.doc_leaf, minlength=self.parent.shape[0])[np.unique(self.doc_leaf)]
        return {
            "levels": self.num_levels,
            "nodes": int(self.parent.shape[0]),
            "docs": len(self.doc_ids),
            "max_branching": int(child_counts.max()) if child_counts.size else 0,
            "max_leaf_size": int(leaf_sizes.max()) if leaf_sizes.size else 0,
            "mean_leaf_size": float(leaf_sizes.mean()) if leaf_sizes.size else 0.0,
        }

    # ---- persistence ------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write tree.npz and tree_doc_ids.txt atomically (ids first, so the npz seals the pair)."""
        folder = Path(folder)
        write_ids(folder / TREE_IDS_NAME, self.doc_ids)
        buf = io.BytesIO()
        np.savez(
            buf,
            format=np.array(TREE_FORMAT),
            format_version=np.array(TREE_VERSION, np.int32),
            parent=self.parent,
            centroids=self.centroids,
            doc_leaf=self.doc_leaf,
        )
        atomic.write_bytes(folder / TREE_NAME, buf.getvalue())

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Tree:
        folder = Path(folder)
        path = folder / TREE_NAME
        if not path.is_file():
            raise FormatError(f"{path}: file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, NotImplementedError) as e:
            raise FormatError(f"{path}: not a readable npz file ({e})") from None
        missing = {"format", "format_version", "parent", "centroids", "doc_leaf"} - arrays.keys()
        if missing:
            raise FormatError(f"{path}: missing arrays {sorted(missing)}")
        if str(arrays["format"]) != TREE_FORMAT:
            raise FormatError(f"{path}: expected format {TREE_FORMAT!r}, found {str(arrays['format'])!r}")
        version = int(arrays["format_version"])
        if version > TREE_VERSION:
            raise VersionError(f"{path}: format_version {version} is newer than this hce supports ({TREE_VERSION})")
        ids = read_ids(folder / TREE_IDS_NAME)
        tree = object.__new__(cls)
        object.__setattr__(tree, "parent", arrays["parent"])
        object.__setattr__(tree, "centroids", arrays["centroids"])
        object.__setattr__(tree, "doc_leaf", arrays["doc_leaf"])
        object.__setattr__(tree, "doc_ids", ids)
        tree.validate(str(path))
        return tree


def write_ids(path: str | os.PathLike[str], ids: list[str]) -> None:
    """One id per line; ids must not contain newlines (checked)."""
    for i in ids:
        if "\n" in i or "\r" in i:
            raise FormatError(f"{path}: document id {i!r} contains a line break")
    atomic.write_text(path, "".join(i + "\n" for i in ids))


def read_ids(path: str | os.PathLike[str]) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{p}: not UTF-8 text (byte {e.start})") from None
    if text and not text.endswith("\n"):
        raise FormatError(f"{p}: truncated (last line has no newline)")
    return text.split("\n")[:-1] if text else []


def load_tree(folder: Path, dim: int) -> Tree | None:
    """The corpus tree an export (or an index's encoder copy) carries, checked; None when it has none."""
    if not (folder / TREE_NAME).is_file():
        return None
    tree = Tree.load(folder)
    if tree.dim != dim:
        raise FormatError(f"{folder / TREE_NAME}: tree centroids are {tree.dim}-d, the encoder's dim is {dim}")
    return tree
