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
        self._under: dict[int, np.ndarray] = {}  # node -> every document below it

    def top_nodes(self, docs: np.ndarray) -> np.ndarray:
        """(n,) the top-level node (depth 1) above each document: its topic for tree-topic batches."""
        return self.paths[np.asarray(docs, np.int64), 0]

    def parent_docs(self, doc: int) -> np.ndarray:
        """Every document under the parent of ``doc``'s leaf: the pool siblings are ever drawn from."""
        node = int(self.tree.parent[int(self.tree.doc_leaf[doc])])
        if node not in self._under:
            if node == 0:  # a one-level tree: the leaf's parent is the root
                self._under[node] = np.arange(self.paths.shape[0], dtype=np.int64)
            else:
                depth = int(np.flatnonzero(self.paths[doc] == node)[0])
                self._under[node] = np.flatnonzero(self.paths[:, depth] == node).astype(np.int64)
        return self._under[node]

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
    q_emb: np.ndarray, d_emb: np.ndarray, positives: list[frozenset[int]], lo: int, hi: int,
    max_scores: np.ndarray | None = None,
) -> np.ndarray:
    """(queries, hi - lo) int64: each query's start-encoder ranks lo..hi after removing its positives.

    ``max_scores`` (queries,): documents scoring above a query's bound are removed before ranking too
    (TopK-PercPos: the bound is R x the score of the query's positive).
    """
    if max_scores is not None:
        return _mine_bounded(q_emb, d_emb, positives, lo, hi, np.asarray(max_scores, np.float32))
    from .evaluate import exact_topk

    _, idx = exact_topk(q_emb, d_emb, min(d_emb.shape[0], hi + max((len(p) for p in positives), default=0)))
    pools = np.full((q_emb.shape[0], hi - lo), -1, np.int64)
    for i, row in enumerate(idx):
        ranked = [int(d) for d in row if int(d) not in positives[i]][lo:hi]
        pools[i, : len(ranked)] = ranked
    return pools


def _mine_bounded(q_emb: np.ndarray, d_emb: np.ndarray, positives: list[frozenset[int]], lo: int, hi: int,
                  bound: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``mine_pools`` with a per-query score bound: full scores per chunk, positives and over-bound masked."""
    q = np.ascontiguousarray(q_emb, np.float32)
    d = np.ascontiguousarray(d_emb, np.float32)
    k = min(hi, d.shape[0])
    pools = np.full((q.shape[0], hi - lo), -1, np.int64)
    for start in range(0, q.shape[0], chunk):
        s = q[start : start + chunk] @ d.T  # (c, docs)
        for i in range(s.shape[0]):
            s[i, list(positives[start + i])] = -np.inf
        s[s > bound[start : start + chunk, None]] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < d.shape[0] else np.tile(np.arange(k), (s.shape[0], 1))
        ps = np.take_along_axis(s, part, 1)
        order = np.argsort(-ps, axis=1, kind="stable")
        for i in range(s.shape[0]):
            ranked = [int(part[i, j]) for j in order[i] if np.isfinite(ps[i, j])][lo:hi]
            pools[start + i, : len(ranked)] = ranked
    return pools


def percpos_bounds(q_emb: np.ndarray, d_emb: np.ndarray, doc_rows: np.ndarray, ratio: float) -> np.ndarray:
    """(n,) R x each example's score of its own positive: TopK-PercPos drops negatives scoring above it."""
    return ratio * np.einsum("nd,nd->n", q_emb, d_emb[np.asarray(doc_rows, np.int64)])


def percpos_exclusions(index: TreeIndex, q_emb: np.ndarray, d_emb: np.ndarray, doc_rows: np.ndarray,
                       positives: list[frozenset[int]], ratio: float) -> np.ndarray:
    """(n, W) int64, -1 padded: per example, the documents a sibling could be drawn from (under the parent of
    the positive's leaf) that score above R x the positive, under the encoder of ``q_emb``/``d_emb``.

    Only the sibling pool is scanned: no other document can become a sibling, and a poorly ranked positive
    would otherwise put much of the corpus on the list.
    """
    bound = percpos_bounds(q_emb, d_emb, doc_rows, ratio)
    rows: list[list[int]] = []
    for i, doc in enumerate(np.asarray(doc_rows, np.int64)):
        cand = index.parent_docs(int(doc))
        over = cand[d_emb[cand] @ q_emb[i] > bound[i]]
        rows.append([int(d) for d in over if int(d) not in positives[i]])
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def query_sibling_pools(index: TreeIndex, q_emb: np.ndarray, d_emb: np.ndarray, doc_rows: np.ndarray,
                        positives: list[frozenset[int]], pool: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """(n, pool) int64, -1 padded: per example, the documents under the parent of its positive's leaf, ranked
    by the query (best first), its positives and ``exclude[i]`` (the filter's rows) removed: query-aware
    siblings, the query's confusions inside the positive's subtree rather than the positive's neighbours."""
    out = np.full((len(doc_rows), pool), -1, np.int64)
    for i, doc in enumerate(np.asarray(doc_rows, np.int64)):
        cand = index.parent_docs(int(doc))
        drop = set(positives[i]) | ({int(r) for r in exclude[i] if r >= 0} if exclude is not None else set())
        if drop:
            cand = cand[~np.isin(cand, list(drop))]
        scores = d_emb[cand] @ q_emb[i]
        top = cand[np.argsort(-scores, kind="stable")[:pool]]
        out[i, : top.size] = top
    return out


def _pad(picked: list[int], s: int) -> np.ndarray:
    out = np.full(s, -1, np.int64)
    out[: len(picked)] = picked[:s]
    return out
