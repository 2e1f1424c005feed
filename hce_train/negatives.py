"""Negative documents and centroid levels for a batch, for the three arms.

``hce``: up to S siblings from the positive's leaf, topped up from the leaves under the same parent in
order of centroid similarity to the positive's leaf (nearest first), so every arm gets the same S; plus
the positive's path through the tree for the centroid levels. ``flat``: S uniformly random documents.
``mined``: S drawn from ranks [lo, hi) of the starting (or refreshed) encoder.

A query's own relevant documents are never negatives, at any level: a centroid-level candidate that
holds another positive of the same query is masked. Every hard-negative arm gets the same guard against
unjudged positives: mined skips ranks < lo; hce drops siblings that rank in the query's top ``guard``
(``mine_pools(..., 0, guard)`` of the encoder that built the tree). Rows with fewer than S candidates are
padded with -1 (masked in the loss).
"""

from __future__ import annotations

import numpy as np

from hce_serve.formats.tree import Tree


class TreeIndex:
    """A tree's lookups precomputed for sampling: per-document paths, children, leaf members."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.levels = tree.num_levels
        self.children = tree.children()
        self.members = tree.leaf_members()
        n_docs = tree.doc_leaf.shape[0]
        self.paths = np.zeros((n_docs, self.levels), np.int64)  # (docs, L): node at depth 1..L
        node = tree.doc_leaf.astype(np.int64)
        for depth in range(self.levels - 1, -1, -1):
            self.paths[:, depth] = node
            node = tree.parent[node].astype(np.int64)
        self._near: dict[int, list[int]] = {}  # leaf -> its parent's other leaves, nearest centroid first

    def near_leaves(self, leaf: int) -> list[int]:
        """The other leaves under ``leaf``'s parent, by cosine of their centroids to ``leaf``'s, nearest first."""
        if leaf not in self._near:
            kids = [int(c) for c in self.children[int(self.tree.parent[leaf])] if c != leaf]
            cent = self.tree.centroids
            unit = cent[kids] / np.maximum(np.linalg.norm(cent[kids], axis=1, keepdims=True), 1e-12)
            own = cent[leaf] / max(float(np.linalg.norm(cent[leaf])), 1e-12)
            self._near[leaf] = [kids[i] for i in np.argsort(-(unit @ own), kind="stable")]
        return self._near[leaf]

    def siblings(self, doc: int, exclude: frozenset[int] | set[int], s: int, rng: np.random.Generator) -> np.ndarray:
        """Up to ``s`` documents from doc's leaf (random order), then from the nearest other leaves."""
        leaf = int(self.tree.doc_leaf[doc])
        picked: list[int] = []
        for node in [leaf, *self.near_leaves(leaf)]:
            if len(picked) >= s:
                break
            pool = [int(d) for d in self.members[node] if d not in exclude and d != doc]
            picked += [int(d) for d in rng.permutation(pool)[: s - len(picked)]] if pool else []
        return _pad(picked, s)

    def centroid_levels(
        self, docs: np.ndarray, positives: list[frozenset[int]] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per level (top first): (candidate node ids (b, K) padded -1, mask (b, K), target (b,)).

        ``positives[i]`` (every relevant row of example i's query) masks the candidates that hold another
        positive of that query: they are not wrong answers, so they must not be pushed away.
        """
        out = []
        for depth in range(self.levels):
            nodes = self.paths[docs, depth]  # (b,)
            parents = self.tree.parent[nodes]
            k = max(self.children[p].size for p in parents)
            cand = np.full((docs.size, k), -1, np.int64)
            target = np.zeros(docs.size, np.int64)
            mask = np.zeros((docs.size, k), bool)
            for i, (node, p) in enumerate(zip(nodes, parents, strict=True)):
                kids = self.children[p]
                cand[i, : kids.size] = kids
                target[i] = int(np.flatnonzero(kids == node)[0])
                mask[i, : kids.size] = True
                if positives is not None and len(positives[i]) > 1:
                    held = {int(self.paths[r, depth]) for r in positives[i]} - {int(node)}
                    mask[i, : kids.size] &= ~np.isin(kids, list(held))
            out.append((cand, mask, target))
        return out


def random_negatives(n_docs: int, doc: int, exclude: frozenset[int], s: int, rng: np.random.Generator) -> np.ndarray:
    """``s`` distinct random documents that are neither ``doc`` nor relevant (fewer if the corpus is tiny)."""
    allowed = n_docs - len(exclude | {doc})
    want = min(s, max(allowed, 0))
    picked: list[int] = []
    seen = set(exclude) | {doc}
    while len(picked) < want:
        for d in rng.integers(0, n_docs, size=2 * (want - len(picked)) + 4):
            if int(d) not in seen:
                seen.add(int(d))
                picked.append(int(d))
                if len(picked) == want:
                    break
    return _pad(picked, s)


def mined_negatives(pool: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """``s`` of a query's mined candidates (row of -1-padded ranks lo..hi), drawn without replacement."""
    real = pool[pool >= 0]
    return _pad(list(rng.permutation(real)[:s]) if real.size else [], s)


def mine_pools(
    q_emb: np.ndarray, d_emb: np.ndarray, positives: list[frozenset[int]], lo: int, hi: int
) -> np.ndarray:
    """(queries, hi - lo) int64: each query's start-encoder ranks lo..hi after removing its positives."""
    from .evaluate import exact_topk

    _, idx = exact_topk(q_emb, d_emb, min(d_emb.shape[0], hi + max((len(p) for p in positives), default=0)))
    pools = np.full((q_emb.shape[0], hi - lo), -1, np.int64)
    for i, row in enumerate(idx):
        ranked = [int(d) for d in row if int(d) not in positives[i]][lo:hi]
        pools[i, : len(ranked)] = ranked
    return pools


def _pad(picked: list[int], s: int) -> np.ndarray:
    out = np.full(s, -1, np.int64)
    out[: len(picked)] = picked[:s]
    return out
