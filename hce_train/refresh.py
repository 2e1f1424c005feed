"""What a fit re-derives from the current encoder on the rebuild schedule (the E step of the EM loop).

``hce``: re-encode the corpus, rebuild the tree, and recompute each example's guard (its top-G documents,
positives removed, which siblings must not include). ``mined`` with ``refresh_mined``: re-encode and re-mine
ranks [lo, hi) on the same schedule (the ``mined-refresh`` control: fresh hard negatives, no hierarchy).
Static ``mined`` mines once from the starting encoder; ``flat`` needs nothing. With cached negatives every
arm re-encodes the corpus on the schedule: the negatives' embeddings come from that encode.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from hce_serve.formats.tree import Tree

from . import dist
from .config import REBUILD_EPOCH, REBUILD_HALF_EPOCH, TrainConfig
from .data import Corpus, Examples, load_corpus, pseudo_query_examples, supervised_examples
from .model import HCEEncoder
from .negatives import TreeIndex, mine_pools, percpos_bounds, percpos_exclusions, query_sibling_pools
from .tree_builder import TreeConfig, build_tree

log = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"


def due(every: int, step: int, pos_in_epoch: int, last_step: int, epoch_len: int = 0) -> bool:
    """Whether to refresh before ``step``: first step always; then each epoch start, each half epoch (start
    and position ``epoch_len // 2``) or every N steps."""
    if last_step < 0:
        return True
    if last_step == step:
        return False
    if every == REBUILD_EPOCH:
        return pos_in_epoch == 0
    if every == REBUILD_HALF_EPOCH:
        return pos_in_epoch == 0 or (epoch_len > 1 and pos_in_epoch == epoch_len // 2)
    return every > 0 and step % every == 0


def refreshes(cfg: TrainConfig) -> bool:
    """Whether this arm re-derives anything from the encoder as training goes."""
    return (cfg.negatives == "hce" or (cfg.uses_mined and cfg.refresh_mined) or cfg.batching == "tree-topic"
            or cfg.negative_encoding == "cached")


class RunState:
    """State shared by the phases of one fit: data, the latest corpus embeddings, the train log."""

    def __init__(self, cfg: TrainConfig, env: dist.DistEnv, device: str, progress: bool) -> None:
        self.cfg, self.env, self.device = cfg, env, device
        self.progress = progress and env.is_main
        self.out = Path(cfg.out)
        self.corpus: Corpus = load_corpus(cfg.data)
        self._sup = (supervised_examples(cfg.data, cfg.split, self.corpus, cfg.holdout_queries)
                     if cfg.mode == "supervised" else None)
        self._epoch_cache: dict[int, Examples] = {}
        self.last_embeddings: np.ndarray | None = None  # corpus embeddings behind the latest tree

    def examples(self, epoch: int) -> Examples:
        if self._sup is not None:
            return self._sup
        if epoch not in self._epoch_cache:
            cfg = self.cfg
            drop = cfg.crop_drop if cfg.pseudo_queries == "crop" else 0.0
            pos_rng = np.random.default_rng([cfg.seed, epoch, 5]) if cfg.pseudo_positive == "crop" else None
            self._epoch_cache = {epoch: pseudo_query_examples(
                self.corpus, np.random.default_rng([cfg.seed, epoch, 3]), cfg.span_min_words, cfg.span_max_words,
                drop=drop, positive_rng=pos_rng)}
        return self._epoch_cache[epoch]

    def log_row(self, row: dict[str, Any]) -> None:
        if self.env.is_main:
            with open(self.out / LOG_NAME, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, sort_keys=True) + "\n")

    def encode_corpus(self, encoder: HCEEncoder) -> np.ndarray:
        """(docs, D) corpus embeddings; under DDP each rank encodes a slice and all gather."""
        part = np.array_split(np.arange(len(self.corpus)), self.env.world)[self.env.rank]
        local = encoder.encode([self.corpus.texts[i] for i in part], self.cfg.doc_max_length,
                               self.cfg.encode_batch_size, self.progress, "encode corpus")
        emb = dist.gather_rows(local, self.env)
        self.last_embeddings = emb
        return emb

    def build(self, encoder: HCEEncoder, step: int, emb: np.ndarray | None = None) -> Tree:
        """Rebuild the tree from ``emb`` (default: a fresh corpus encode) on rank 0, broadcast to the others."""
        t0 = time.perf_counter()
        emb = self.encode_corpus(encoder) if emb is None else emb
        cfg = self.cfg
        tree = None
        if self.env.is_main:
            tcfg = TreeConfig(cfg.branching, cfg.leaf_size, cfg.tree_balance, cfg.kmeans_iters, cfg.seed)
            tree = build_tree(emb, self.corpus.ids, tcfg, progress=self.progress)
        parent = dist.broadcast_array(tree.parent if tree else None, np.int32, 1, self.env)
        cent = dist.broadcast_array(tree.centroids if tree else None, np.float32, 2, self.env)
        leaf = dist.broadcast_array(tree.doc_leaf if tree else None, np.int32, 1, self.env)
        tree = tree or Tree(parent, cent, leaf, self.corpus.ids)
        secs = time.perf_counter() - t0
        log.info("step %d: tree rebuilt in %.1f s: %s", step, secs, tree.summary())
        self.log_row({"event": "tree_rebuild", "step": step, "seconds": round(secs, 2), **tree.summary()})
        return tree

    def encode_queries(self, encoder: HCEEncoder, exs: Examples) -> np.ndarray:
        return encoder.encode(exs.queries, self.cfg.query_max_length, self.cfg.encode_batch_size, self.progress,
                              "encode queries")

    def rank_pools(self, encoder: HCEEncoder, exs: Examples, d_emb: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """(examples, hi - lo): each example's ranks [lo, hi) under ``encoder``, its positives removed."""
        return mine_pools(self.encode_queries(encoder, exs), d_emb, exs.positives, lo, hi)


def mined_pools(cfg: TrainConfig, q_emb: np.ndarray, d_emb: np.ndarray, exs: Examples) -> np.ndarray:
    """Each example's mined pool: ranks [lo, hi), positives removed, and with ``percpos:R`` every document
    scoring above R x the example's positive removed first (all under the encoder of the embeddings)."""
    bound = percpos_bounds(q_emb, d_emb, exs.doc_rows, cfg.percpos) if cfg.percpos is not None else None
    return mine_pools(q_emb, d_emb, exs.positives, cfg.mined_rank_lo, cfg.mined_rank_hi, max_scores=bound)


def mine(run: RunState, encoder: HCEEncoder, exs: Examples) -> np.ndarray:
    """Pools of the encoder's ranks [lo, hi) per example, positives removed (the mined arms)."""
    return mined_pools(run.cfg, run.encode_queries(encoder, exs), run.encode_corpus(encoder), exs)


def refresh(run: RunState, ctx: Any, encoder: HCEEncoder, step: int, exs: Examples) -> Tree | None:
    """One E step for ``ctx``'s arm; returns the new tree (hce, or any arm with tree-topic batches) or None.
    Updates ctx in place."""
    import torch

    cfg = run.cfg
    t0 = time.perf_counter()
    emb = run.encode_corpus(encoder)
    keep_corpus(ctx, emb, cfg)
    q_cache: list[np.ndarray] = []

    def queries() -> np.ndarray:  # encoded once per refresh, only if something needs them
        if not q_cache:
            q_cache.append(run.encode_queries(encoder, exs))
        return q_cache[0]

    if cfg.uses_mined and cfg.refresh_mined:
        ctx.mined = mined_pools(cfg, queries(), emb, exs)
    if cfg.negatives != "hce" and cfg.batching != "tree-topic":
        run.log_row({"event": "refresh", "step": step, "seconds": round(time.perf_counter() - t0, 2)})
        return None
    tree = run.build(encoder, step, emb)
    ctx.tree, ctx.centroids = TreeIndex(tree), torch.from_numpy(tree.centroids).to(run.device)
    if cfg.negatives != "hce":
        return tree
    guard = int(cfg.sibling_guard or 0)
    if guard > 0:
        ctx.guard = mine_pools(queries(), emb, exs.positives, 0, guard)
    elif cfg.percpos is not None:
        ctx.guard = percpos_exclusions(ctx.tree, queries(), emb, exs.doc_rows, exs.positives, cfg.percpos)
    else:
        ctx.guard = None
    if cfg.sibling_select == "query":
        ctx.sib_pool = query_sibling_pools(ctx.tree, queries(), emb, exs.doc_rows, exs.positives,
                                           cfg.query_sibling_pool, exclude=ctx.guard)
    return tree


def keep_corpus(ctx: Any, emb: np.ndarray, cfg: TrainConfig) -> None:
    """Keep the corpus encode for cached negatives (on the training device)."""
    import torch

    if cfg.negative_encoding == "cached":
        ctx.corpus_emb = torch.from_numpy(emb).to(ctx.encoder.device)
