"""The prefix-aware decoder: a query embedding in, a distribution over the children of a tree node out.

Each step scores the children of the current node (the prefix's last node) by a cosine classifier:

    x      = Q(u)                                   query state, from the encoder's pooled embedding u
    h_p    = GRU(e_{a_1}, ..., e_{a_t})             prefix state after reading the path a_1..a_t = p
    z_p    = normalize(LN(x + P h_p))               what the decoder asks for under prefix p
    w_c|p  = normalize(e_c * (1 + tanh(A h_p)))     child c's output weight, adapted to its prefix
    logit_c = s * <z_p, w_c|p>

Node embeddings ``e`` are learned from random initialisation (not the tree's centroids). ``w_c|p`` is NCI's
prefix-aware weight-adaptive layer (Wang et al. 2022) in a form that costs nothing per query: the adaptation
depends on the prefix only, so it is computed once per node and shared by every query. NCI decodes with
cross-attention over the encoder's token states (a T5 decoder); here the decoder reads the pooled embedding,
which is what lets the indexing phase train on cached embeddings within a CPU budget.

The last step ranks the documents of the chosen leaf against learned document embeddings (DSI's atomic
identifiers, scoped to the leaf): ``logit_d = s * <z_leaf, normalize(v_d)>``. Because the classifiers are
cosine classifiers, a document added after training gets ``v_d`` by weight imprinting (Qi et al. 2018): the
normalised mean of the states its crops reach at its leaf, with no gradient step (``imprint``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hce_serve.errors import FormatError

from .codes import TreeCodes

DECODER_WEIGHTS = "gr_decoder.safetensors"
DECODER_CONFIG = "gr_decoder.json"


@dataclass
class CodeTensors:
    """``TreeCodes`` on a device, plus where each node sits among its parent's children and each document
    among its leaf's documents (the targets of teacher forcing)."""

    children: torch.Tensor  # (nodes, K) int64, -1 padded
    leaf_docs: torch.Tensor  # (nodes, D) int64, -1 padded
    paths: torch.Tensor  # (docs, L) int64
    parent: torch.Tensor  # (nodes,) int64, -1 for the root
    child_pos: torch.Tensor  # (nodes,) int64: column of the node in children[parent]
    doc_pos: torch.Tensor  # (docs,) int64: column of the document in leaf_docs[its leaf]
    by_depth: list[torch.Tensor]  # node ids at depth 1, 2, .., L

    @classmethod
    def of(cls, codes: TreeCodes, device: str | torch.device = "cpu") -> CodeTensors:
        child_pos = np.zeros(codes.n_nodes, np.int64)
        rows, cols = np.nonzero(codes.children >= 0)
        child_pos[codes.children[rows, cols]] = cols
        doc_pos = np.zeros(codes.n_docs, np.int64)
        rows, cols = np.nonzero(codes.leaf_docs >= 0)
        doc_pos[codes.leaf_docs[rows, cols]] = cols

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        return cls(t(codes.children), t(codes.leaf_docs), t(codes.paths), t(codes.parent), t(child_pos), t(doc_pos),
                   [t(np.flatnonzero(codes.depth == d)) for d in range(1, codes.levels + 1)])


@dataclass
class Tables:
    """What the decoder derives from its parameters once per forward pass (or once for a search): per node."""

    prefix_shift: torch.Tensor  # (nodes, d) P h_p: moves the query state under prefix p
    child_weight: torch.Tensor  # (nodes, d) w_c|parent(c), unit rows
    doc_weight: torch.Tensor  # (docs, d) unit rows
    scale: torch.Tensor  # () the cosine classifiers' logit scale


class GRDecoder(nn.Module):
    """The decoder of the generative retriever; ``n_docs`` grows when documents are imprinted."""

    def __init__(self, n_nodes: int, n_docs: int, in_dim: int, dim: int = 384, scale: float = 20.0) -> None:
        super().__init__()
        self.shape = {"n_nodes": n_nodes, "n_docs": n_docs, "in_dim": in_dim, "dim": dim, "scale": scale}
        self.inp = nn.Linear(in_dim, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.node_emb = nn.Embedding(n_nodes, dim)  # row 0 (the root) is never read: the root is never emitted
        nn.init.normal_(self.node_emb.weight, std=0.02)
        self.h0 = nn.Parameter(torch.zeros(dim))  # the empty prefix
        self.gru = nn.GRUCell(dim, dim)
        self.prefix_in = nn.Linear(dim, dim)
        self.adapt = nn.Linear(dim, dim)
        nn.init.zeros_(self.adapt.weight)  # start unadapted (gate 1); the prefix earns its say
        nn.init.zeros_(self.adapt.bias)
        self.norm = nn.LayerNorm(dim)
        self.doc_emb = nn.Parameter(torch.randn(n_docs, dim) * 0.02)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    # ---- per-node tables ----------------------------------------------------------------------
    def prefix_states(self, ct: CodeTensors) -> torch.Tensor:
        """(nodes, d) h_p for every node p: the GRU run over the node embeddings of p's path."""
        n, d = self.node_emb.num_embeddings, self.h0.shape[0]
        h = self.h0.expand(n, d)  # the root's state; deeper rows are overwritten level by level
        for nodes in ct.by_depth:  # parents are one level up, so already final
            h = h.index_copy(0, nodes, self.gru(self.node_emb(nodes), h[ct.parent[nodes]]))  # (nodes, d)
        return h

    def tables(self, ct: CodeTensors) -> Tables:
        h = self.prefix_states(ct)  # (nodes, d)
        gate = 1.0 + torch.tanh(self.adapt(h))  # (nodes, d): how prefix p re-weights its children's embeddings
        child_weight = F.normalize(self.node_emb.weight * gate[ct.parent.clamp(min=0)], dim=-1)  # (nodes, d)
        return Tables(self.prefix_in(h), child_weight, F.normalize(self.doc_emb, dim=-1),
                      self.log_scale.clamp(max=math.log(100.0)).exp())

    # ---- per-query states and logits --------------------------------------------------------
    def query_state(self, u: torch.Tensor) -> torch.Tensor:
        """(n, d) x from the encoder's (n, in_dim) pooled embeddings."""
        x = self.inp(u)  # (n, d)
        return x + self.mlp(x)

    def state(self, x: torch.Tensor, prefix: torch.Tensor, tab: Tables) -> torch.Tensor:
        """z_p (..., d) for query states x (..., d) under prefix nodes ``prefix`` (...)."""
        return F.normalize(self.norm(x + tab.prefix_shift[prefix]), dim=-1)

    def child_logits(self, x: torch.Tensor, prefix: torch.Tensor, tab: Tables, ct: CodeTensors
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (..., K) with -inf on padding, candidate node ids (..., K)) for the children of ``prefix``."""
        cand = ct.children[prefix]  # (..., K)
        z = self.state(x, prefix, tab)  # (..., d)
        # Against every node, then the children picked: a few hundred nodes make one matmul cheaper than a
        # gather of the children's weights, whose backward is a slow scatter on CPUs.
        every = z @ tab.child_weight.T  # (..., nodes)
        logits = tab.scale * every.gather(-1, cand.clamp(min=0))  # (..., K)
        return logits.masked_fill(cand < 0, float("-inf")), cand

    def doc_logits(self, x: torch.Tensor, leaf: torch.Tensor, tab: Tables, ct: CodeTensors
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (..., D), candidate document rows (..., D)) over the documents of leaf nodes ``leaf``."""
        cand = ct.leaf_docs[leaf]  # (..., D)
        z = self.state(x, leaf, tab)  # (..., d)
        weights = F.embedding(cand.clamp(min=0), tab.doc_weight)  # (..., D, d)
        logits = tab.scale * torch.matmul(weights, z[..., None])[..., 0]  # (..., D)
        return logits.masked_fill(cand < 0, float("-inf")), cand

    def path_log_probs(self, u: torch.Tensor, docs: torch.Tensor, ct: CodeTensors, tab: Tables | None = None,
                       smoothing: float = 0.0) -> torch.Tensor:
        """(n, L + 1) teacher-forced log-probabilities of each step of document ``docs[i]``'s path for query
        ``u[i]``: one column per tree level, then the document within its leaf. Their sum is the score the
        beam search ranks by. ``smoothing`` > 0 gives the label-smoothed training objective instead: each step's
        (1 - smoothing) x its target's log-probability + smoothing x the mean over that step's valid options."""
        tab = tab or self.tables(ct)
        x = self.query_state(u)  # (n, d)
        path = ct.paths[docs]  # (n, L)
        prefix = torch.zeros_like(docs)  # the root
        cols = []

        def pick(logits: torch.Tensor, cand: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            lp = logits.log_softmax(-1)  # (n, K)
            own = lp.gather(1, target[:, None])[:, 0]  # (n,)
            if smoothing <= 0:
                return own
            valid = cand >= 0  # (n, K)
            spread = lp.masked_fill(~valid, 0.0).sum(1) / valid.sum(1)  # (n,) mean log-probability of the options
            return (1 - smoothing) * own + smoothing * spread

        for t in range(path.shape[1]):
            logits, cand = self.child_logits(x, prefix, tab, ct)  # (n, K)
            cols.append(pick(logits, cand, ct.child_pos[path[:, t]]))
            prefix = path[:, t]
        logits, cand = self.doc_logits(x, prefix, tab, ct)  # (n, D)
        cols.append(pick(logits, cand, ct.doc_pos[docs]))
        return torch.stack(cols, 1)  # (n, L + 1)

    # ---- documents added after training -----------------------------------------------------
    @torch.no_grad()
    def imprint(self, u: torch.Tensor, leaf: torch.Tensor, owner: torch.Tensor, n_new: int, ct: CodeTensors
                ) -> None:
        """Append ``n_new`` document embeddings, each the normalised mean of the leaf states its crops reach:
        crop i (embedding ``u[i]``) belongs to new document ``owner[i]`` in [0, n_new), which hangs under leaf
        node ``leaf[i]``. No parameter of the trained model changes."""
        self.doc_emb = nn.Parameter(torch.cat([self.doc_emb.data, self.imprinted(u, leaf, owner, n_new, ct)]))
        self.shape["n_docs"] = int(self.doc_emb.shape[0])

    @torch.no_grad()
    def imprinted(self, u: torch.Tensor, leaf: torch.Tensor, owner: torch.Tensor, n: int, ct: CodeTensors
                  ) -> torch.Tensor:
        """(n, d) unit rows: for each of n documents, the normalised mean of the leaf states its inputs reach
        (input i, embedding ``u[i]``, belongs to document ``owner[i]`` under leaf node ``leaf[i]``)."""
        tab = self.tables(ct)
        z = torch.cat([self.state(self.query_state(u[lo : lo + 4096]), leaf[lo : lo + 4096], tab)
                       for lo in range(0, u.shape[0], 4096)])  # (m, d) unit rows
        sums = torch.zeros(n, z.shape[1], device=z.device).index_add_(0, owner, z)  # (n, d)
        return F.normalize(sums, dim=-1)

    # ---- persistence ------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> None:
        from safetensors.torch import save_file

        from hce_serve.formats import atomic

        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(d / DECODER_WEIGHTS))
        atomic.write_json(d / DECODER_CONFIG, self.shape)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str = "cpu") -> GRDecoder:
        from safetensors.torch import load_file

        d = Path(folder)
        if not (d / DECODER_CONFIG).is_file() or not (d / DECODER_WEIGHTS).is_file():
            raise FormatError(f"{d}: no generative-retrieval decoder ({DECODER_CONFIG}, {DECODER_WEIGHTS})")
        shape = json.loads((d / DECODER_CONFIG).read_text(encoding="utf-8"))
        dec = cls(**shape)
        dec.load_state_dict(load_file(str(d / DECODER_WEIGHTS)))
        return dec.to(device)
