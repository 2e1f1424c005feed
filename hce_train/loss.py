"""The HCE training objective as a pure function of embeddings (no model, no data, no tree object).

For a query q with positive d+ whose tree path is n_1 ... n_L (n_L = the leaf node d+ hangs under):

    L = w_doc * CE(q.d+ vs q.d_s for the S sampled negatives)                       # document level
      + sum_l w_l * CE(q.v(n_l) vs q.v(c), c in children(parent(n_l)))              # centroid levels
      + lambda * (InfoNCE(q -> in-batch docs) + InfoNCE(d+ -> in-batch queries)) / 2

The document-level negatives are tree siblings for ``hce`` (encoded with gradient), random documents for
``flat`` and mined documents for ``mined``: the same function and budget S for every arm.

Why the centroid levels are L2-normalised here: a centroid is the mean of unit vectors, so its norm is
the cluster's mean resultant length (about 0.3-0.8 for MiniLM clusters, smaller the higher the level).
With raw centroids the logits ``q.c / tau`` of a level are compressed by that factor and differ from node
to node with cluster tightness rather than with relevance: high levels then contribute a nearly flat,
gradient-poor softmax, and a loose (large-norm-deficit) right node can lose to a tight wrong one. That is
a plausible reason the prototype's centroid levels "added nothing". Normalising makes every level a cosine
softmax on the same scale as the document level, and ``level_taus`` can still set a level's sharpness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NEG_INF = -1e4  # finite, so a row with every candidate masked gives a zero loss instead of NaN


@dataclass
class CentroidLevel:
    """One level of the positive's path: the right node among its siblings (no gradient)."""

    cand: torch.Tensor  # (b, K, D) centroid vectors of the right node's siblings and itself
    mask: torch.Tensor  # (b, K) bool, True where a candidate is real (rows are padded to K)
    target: torch.Tensor  # (b,) long, index of the right node in cand


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, with gradient
    stats: dict[str, float]  # detached numbers for train_log.jsonl


def hce_loss(
    q: torch.Tensor,
    d_pos: torch.Tensor,
    d_neg: torch.Tensor,
    neg_mask: torch.Tensor,
    levels: Sequence[CentroidLevel] = (),
    *,
    tau: float = 0.05,
    level_taus: Sequence[float] | None = None,
    level_weights: Sequence[float] = (),
    doc_weight: float = 1.0,
    inbatch_weight: float = 1.0,
    all_q: torch.Tensor | None = None,
    all_docs: torch.Tensor | None = None,
    offset: int = 0,
    qd_exclude: torch.Tensor | None = None,
    dq_exclude: torch.Tensor | None = None,
    normalize_centroids: bool = True,
) -> LossOutput:
    """Combined loss for ``b`` local queries.

    q, d_pos: (b, D); d_neg: (b, S, D) with neg_mask (b, S). ``all_q`` (B, D) and ``all_docs`` (N, D) are the
    in-batch pools (gathered across ranks under DDP; default: the local q and [d_pos; d_neg]); the positive
    of local row i sits at pool row ``offset + i`` of both. ``qd_exclude`` (b, N) / ``dq_exclude`` (b, B) mark
    pool entries that must not count as negatives (other positives of the same query, padding).
    ``level_weights[l]`` / ``level_taus[l]`` belong to ``levels[l]`` (top level first).
    """
    q, d_pos, d_neg = q.float(), d_pos.float(), d_neg.float()
    b, s = neg_mask.shape
    stats: dict[str, float] = {}
    rows = torch.arange(b, device=q.device)

    # Document level: the positive against its S negatives.
    pos_score = (q * d_pos).sum(-1)  # (b,)
    neg_score = torch.einsum("bd,bsd->bs", q, d_neg)  # (b, S)
    neg_score = neg_score.masked_fill(~neg_mask, NEG_INF)
    doc_logits = torch.cat([pos_score[:, None], neg_score], dim=1) / tau  # (b, 1 + S)
    doc_ce = F.cross_entropy(doc_logits, torch.zeros(b, dtype=torch.long, device=q.device))
    total = doc_weight * doc_ce
    stats["loss_doc"] = float(doc_ce.detach())
    if s and bool(neg_mask.any()):
        has = neg_mask.any(1)
        stats["margin"] = float((pos_score - neg_score.max(1).values)[has].detach().mean())

    # Centroid levels, top first.
    taus = list(level_taus) if level_taus else [tau]  # the last value repeats for deeper levels
    for i, lvl in enumerate(levels):
        cand = lvl.cand.float()
        if normalize_centroids:
            cand = F.normalize(cand, dim=-1)
        tau = taus[min(i, len(taus) - 1)]
        logits = torch.einsum("bd,bkd->bk", q, cand).masked_fill(~lvl.mask, NEG_INF) / tau  # (b, K)
        ce = F.cross_entropy(logits, lvl.target)
        weight = level_weights[i] if i < len(level_weights) else (level_weights[-1] if level_weights else 0.0)
        total = total + weight * ce
        stats[f"loss_level{i + 1}"] = float(ce.detach())
        stats[f"acc_level{i + 1}"] = float((logits.argmax(1) == lvl.target).float().mean())

    # In-batch InfoNCE in both directions.
    if all_q is None:
        all_q = q
    if all_docs is None:
        all_docs = torch.cat([d_pos, d_neg.reshape(b * s, q.shape[1])])  # (b + b*S, D)
        pad = torch.cat([torch.zeros(b, dtype=torch.bool, device=q.device), ~neg_mask.reshape(-1)])
        qd_exclude = pad[None, :].expand(b, -1) if qd_exclude is None else (qd_exclude | pad[None, :])
    all_q, all_docs = all_q.float(), all_docs.float()
    target = rows + offset
    qd = q @ all_docs.T / tau  # (b, N)
    if qd_exclude is not None:
        qd = qd.masked_fill(qd_exclude & (torch.arange(qd.shape[1], device=q.device)[None, :] != target[:, None]),
                            NEG_INF)
    dq = d_pos @ all_q.T / tau  # (b, B)
    if dq_exclude is not None:
        dq = dq.masked_fill(dq_exclude & (torch.arange(dq.shape[1], device=q.device)[None, :] != target[:, None]),
                            NEG_INF)
    inbatch = (F.cross_entropy(qd, target) + F.cross_entropy(dq, target)) / 2
    total = total + inbatch_weight * inbatch
    stats["loss_inbatch"] = float(inbatch.detach())
    stats["inbatch_acc"] = float((qd.argmax(1) == target).float().mean())

    # Collapse watch: mean cosine between distinct positives (-> 1 when every document maps to one point).
    if d_pos.shape[0] > 1:
        sim = d_pos.detach() @ d_pos.detach().T  # (b, b)
        stats["doc_cosine_mean"] = float((sim.sum() - sim.diagonal().sum()) / (b * (b - 1)))
    stats["loss"] = float(total.detach())
    return LossOutput(total, stats)
