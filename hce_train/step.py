"""One optimizer step: sample negatives, encode, gather across ranks, compute the loss, update.

Negatives for the whole global batch are drawn from a generator seeded by (seed, step), identically on
every rank, so each rank knows every pool entry's document id (for false-negative masks) without talking,
and a resumed run draws exactly what the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hce_serve.errors import HCEError

from . import dist
from .config import TrainConfig
from .data import Corpus, Examples
from .loss import CentroidLevel, hce_loss
from .model import HCEEncoder
from .negatives import TreeIndex, mined_negatives, random_negatives


class TrainingError(HCEError):
    """Training diverged (NaN/inf loss)."""


@dataclass
class StepContext:
    cfg: TrainConfig
    encoder: HCEEncoder
    optimizer: torch.optim.Optimizer
    corpus: Corpus
    env: dist.DistEnv
    tree: TreeIndex | None = None  # hce arm
    centroids: torch.Tensor | None = None  # (nodes, D) on the training device, hce arm
    mined: np.ndarray | None = None  # (examples, pool) mined arm
    guard: np.ndarray | None = None  # (examples, G) hce arm: each example's top-G non-positive rows, -1 padded
    corpus_emb: torch.Tensor | None = None  # (docs, D) the latest corpus encode, for cached negatives
    sib_pool: np.ndarray | None = None  # (examples, P) query-aware siblings: the query's top P under the parent


def sample_negatives(ctx: StepContext, exs: Examples, batch: np.ndarray, step: int) -> np.ndarray:
    """(B, S) negative corpus rows for the global batch, -1 where fewer than S exist."""
    cfg = ctx.cfg
    s = cfg.negatives_per_query
    rng = np.random.default_rng([cfg.seed, step, 2])
    out = np.full((batch.size, s), -1, np.int64)
    for i, ex in enumerate(batch):
        doc, excl = int(exs.doc_rows[ex]), exs.positives[ex]
        if cfg.negatives == "hce":
            assert ctx.tree is not None
            if ctx.guard is not None:
                excl = excl | {int(r) for r in ctx.guard[ex] if r >= 0}
            if cfg.sibling_select == "leaf" and cfg.sibling_share >= 1:
                out[i] = ctx.tree.siblings(doc, excl, s, rng)
                continue
            n_sib = int(s * cfg.sibling_share + 0.5)  # hce-mixed: 0.5 of S = 7 is 4 siblings and 3 mined
            if cfg.sibling_select == "query":
                assert ctx.sib_pool is not None
                sib = mined_negatives(ctx.sib_pool[ex], n_sib, rng)  # n_sib drawn from the query's top P
            else:
                sib = ctx.tree.siblings(doc, excl, n_sib, rng)
            picked = [int(d) for d in sib if d >= 0]
            if n_sib < s:
                assert ctx.mined is not None
                pool = ctx.mined[ex]
                rest = mined_negatives(np.where(np.isin(pool, picked), -1, pool), s - n_sib, rng)
                picked += [int(d) for d in rest if d >= 0]
            out[i, : len(picked)] = picked
        elif cfg.negatives == "mined":
            assert ctx.mined is not None
            out[i] = mined_negatives(ctx.mined[ex], s, rng)
        else:
            out[i] = random_negatives(len(ctx.corpus), doc, excl, s, rng)
    return out


def train_step(ctx: StepContext, exs: Examples, batch: np.ndarray, step: int, lr: float,
               level_scale: float = 1.0) -> dict[str, float]:
    """Run one step on the global ``batch`` of example indices; returns the loss statistics.

    ``level_scale`` multiplies the centroid levels' weights (their annealing schedule)."""
    cfg, env, enc = ctx.cfg, ctx.env, ctx.encoder
    big_b = batch.size
    b = big_b // env.world
    s = cfg.negatives_per_query
    mine = slice(env.rank * b, (env.rank + 1) * b)
    neg = sample_negatives(ctx, exs, batch, step)  # (B, S)
    pos_rows = exs.doc_rows[batch]  # (B,)
    local_ex, local_pos, local_neg = batch[mine], pos_rows[mine], neg[mine]

    torch.manual_seed(cfg.seed * 100_003 + step)  # dropout: same draws for a resumed run
    q = enc.embed([exs.queries[i] for i in local_ex], cfg.query_max_length)  # (b, D)
    fill = np.where(local_neg >= 0, local_neg, local_pos[:, None])  # padding encodes the positive, masked below
    pos_texts = ([exs.pos_texts[i] for i in local_ex] if exs.pos_texts is not None  # a second crop (unsupervised)
                 else [ctx.corpus.texts[r] for r in local_pos])
    if cfg.negative_encoding == "cached":  # negatives from the latest corpus encode: constants, no forward pass
        assert ctx.corpus_emb is not None
        d_pos = enc.embed(pos_texts, cfg.doc_max_length)  # (b, D)
        d_neg = ctx.corpus_emb[torch.from_numpy(fill)].to(q.device)  # (b, S, D)
    else:
        texts = pos_texts + [ctx.corpus.texts[r] for r in fill.reshape(-1)]  # (b + b*S,)
        docs = enc.embed(texts, cfg.doc_max_length)  # (b + b*S, D)
        d_pos, d_neg = docs[:b], docs[b:].reshape(b, s, docs.shape[1])  # (b, D), (b, S, D)
    dev = q.device
    neg_mask = torch.from_numpy(local_neg >= 0).to(dev)  # (b, S)

    levels = []
    if ctx.tree is not None and cfg.negatives == "hce":
        assert ctx.centroids is not None
        for cand, mask, target in ctx.tree.centroid_levels(local_pos, [exs.positives[e] for e in local_ex]):
            vecs = ctx.centroids[torch.from_numpy(np.maximum(cand, 0)).to(dev)]  # (b, K, D)
            levels.append(CentroidLevel(vecs, torch.from_numpy(mask).to(dev), torch.from_numpy(target).to(dev)))

    all_q = dist.gather_with_grad(q, env)  # (B, D)
    all_docs = torch.cat([dist.gather_with_grad(d_pos, env),
                          dist.gather_with_grad(d_neg.reshape(b * s, q.shape[1]), env)])  # (B + B*S, D)
    pool_rows = np.concatenate([pos_rows, neg.reshape(-1)])  # (B + B*S,) row of each pool entry, -1 = padding
    qd_ex = np.array([[r < 0 or r in exs.positives[e] for r in pool_rows] for e in local_ex])  # (b, B + B*S)
    dq_ex = np.array([[int(p) in exs.positives[e] for e in batch] for p in local_pos])  # (b, B)

    out = hce_loss(
        q, d_pos, d_neg, neg_mask, levels,
        tau=cfg.tau, level_taus=cfg.level_taus, doc_weight=cfg.doc_weight,
        level_weights=cfg.level_weights if level_scale == 1.0 else tuple(w * level_scale for w in cfg.level_weights),
        inbatch_weight=cfg.inbatch_weight, all_q=all_q, all_docs=all_docs, offset=env.rank * b,
        qd_exclude=torch.from_numpy(qd_ex).to(dev), dq_exclude=torch.from_numpy(dq_ex).to(dev),
        normalize_centroids=cfg.normalize_centroids,
    )
    if not dist.all_finite(out.stats["loss"], env):
        raise TrainingError(
            f"loss became {out.stats['loss']} at step {step + 1}; try a lower --lr, a higher temperature "
            "or fp32 (the model may also be broken)"
        )
    for group in ctx.optimizer.param_groups:
        group["lr"] = lr
    ctx.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    params = [p for p in enc.model.parameters() if p.requires_grad]
    dist.average_gradients(params, env)
    if cfg.grad_clip > 0:
        out.stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    ctx.optimizer.step()
    return out.stats
