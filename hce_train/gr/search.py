"""Beam search constrained to the corpus tree, and the exhaustive scoring it is checked against.

A beam entry is a node and the summed log-probability of the path down to it. Each step expands every entry
into the children of its node only (``children[node]``, padding masked to -inf), so no path outside the tree
can ever be emitted; the ``beam`` best survive. The last step expands each surviving leaf node into its
documents and keeps the ``k`` best documents: a document's score is the sum of the log-probabilities of its
path's steps and of itself within its leaf, the same quantity ``GRDecoder.path_log_probs`` sums.
"""

from __future__ import annotations

import torch

from .model import CodeTensors, GRDecoder, Tables


@torch.no_grad()
def beam_search(dec: GRDecoder, x: torch.Tensor, tab: Tables, ct: CodeTensors, beam: int, k: int,
                with_paths: bool = False) -> tuple[torch.Tensor, ...]:
    """(scores (n, k) float32, document rows (n, k) int64) best first for query states ``x`` (n, d); rows are
    -1 (score -inf) where the beam's leaves hold fewer than k documents. ``with_paths`` adds the node path the
    decoder emitted for each result (n, k, L), as the tests check it."""
    n = x.shape[0]
    dev = x.device
    node = torch.zeros(n, 1, dtype=torch.int64, device=dev)  # (n, B) every beam starts at the root
    score = torch.zeros(n, 1, device=dev)  # (n, B)
    hist = torch.zeros(n, 1, 0, dtype=torch.int64, device=dev)  # (n, B, t) the nodes emitted so far
    xb = x[:, None, :]  # (n, 1, d)
    for _ in range(len(ct.by_depth)):
        logits, cand = dec.child_logits(xb.expand(n, node.shape[1], x.shape[1]), node, tab, ct)  # (n, B, K)
        # padding and dead beams stay -inf (a row of padding alone would be NaN after log_softmax)
        total = (score[..., None] + logits.log_softmax(-1)).masked_fill(cand < 0, float("-inf"))  # (n, B, K)
        width = min(beam, total.shape[1] * total.shape[2])
        score, flat = total.reshape(n, -1).topk(width, dim=1)  # (n, B')
        emitted = cand.reshape(n, -1).gather(1, flat)  # (n, B'); -1 only where the score is -inf
        if with_paths:
            src = (flat // cand.shape[2])[..., None].expand(n, width, hist.shape[2])  # (n, B', t) parent beams
            hist = torch.cat([hist.gather(1, src), emitted[..., None]], 2)  # (n, B', t + 1)
        node = emitted.clamp(min=0)  # a -inf entry stays -inf whatever it expands
    logits, cand = dec.doc_logits(xb.expand(n, node.shape[1], x.shape[1]), node, tab, ct)  # (n, B, D)
    total = (score[..., None] + logits.log_softmax(-1)).masked_fill(cand < 0, float("-inf"))  # (n, B, D)
    width = min(k, total.shape[1] * total.shape[2])
    top, flat = total.reshape(n, -1).topk(width, dim=1)  # (n, k)
    rows = cand.reshape(n, -1).gather(1, flat).masked_fill(~torch.isfinite(top), -1)  # (n, k)
    if not with_paths:
        return top, rows
    src = (flat // cand.shape[2])[..., None].expand(n, width, hist.shape[2])  # (n, k, L)
    return top, rows, hist.gather(1, src)


@torch.no_grad()
def all_scores(dec: GRDecoder, x_u: torch.Tensor, ct: CodeTensors) -> torch.Tensor:
    """(n, docs) every document's path score for each of the n queries (encoder embeddings ``x_u``): the
    exhaustive answer a beam as wide as the tree must reproduce."""
    tab = dec.tables(ct)
    n_docs = ct.paths.shape[0]
    docs = torch.arange(n_docs, device=x_u.device)
    return torch.stack([dec.path_log_probs(x_u[i : i + 1].expand(n_docs, -1), docs, ct, tab).sum(1)
                        for i in range(x_u.shape[0])])  # (n, docs)
