"""Training the generative retriever as DSI does, on a CPU budget; evaluating it; adding documents to it.

Data (DSI, Tay et al. 2022; DSI-QG, Zhuang et al. 2022):
- indexing pairs: ``index_pairs`` inputs per document -> its identifier. The first is the document itself (its
  first ``doc_max_length`` tokens, DSI's FirstP indexing), the others random crops of it (the pseudo-query
  recipe of the other arms).
- retrieval pairs (supervised mode only): a training query -> the path of its positive.
- unsupervised mode: the indexing pairs plus pseudo-queries (crops, redrawn every epoch), as DSI-QG trains on
  pseudo-queries in place of labelled ones.

Identifiers: paths of the HCE corpus tree that ``hce_train.tree_builder`` builds from the zero-shot encoder,
with the tree settings every other arm uses. The tree is fixed for the whole run: DSI's semantic identifiers
are assigned once, before training.

Schedule (two phases, because many indexing epochs through MiniLM do not fit a CPU budget):
- A, indexing: the indexing inputs are encoded once by the starting encoder and the decoder trains on those
  cached embeddings for ``index_epochs`` epochs (cheap: the decoder is small).
- B, joint: the shared budget's epochs over the retrieval pairs (or pseudo-queries), encoder and decoder
  trained together, each step mixed with as many fresh indexing crops through the live encoder (DSI's
  multi-task mix), so the memorised identifiers follow the encoder as it moves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hce_serve.errors import ConfigError, FormatError
from hce_serve.formats.tree import Tree

from ..config import TrainConfig
from ..data import Corpus, Examples, load_corpus, pseudo_query_examples, supervised_examples
from ..loop import lr_at
from ..model import HCEEncoder, resolve_base_model, use_bf16
from ..progress import step_bar
from ..tree_builder import TreeConfig, build_tree
from .codes import TreeCodes
from .model import CodeTensors, GRDecoder
from .search import beam_search

log = logging.getLogger(__name__)

GR_CONFIG = "gr_config.json"


@dataclass(frozen=True)
class GRConfig:
    """The generative retriever's own knobs; the rest (data, seed, epochs, batch, lengths, lr, precision, crops,
    tree settings) come from the ``TrainConfig`` every arm of the quality study shares."""

    dim: int = 384  # decoder width
    index_pairs: int = 8  # indexing inputs per document: the document itself + (index_pairs - 1) crops
    index_epochs: int = 30  # phase A epochs over the cached indexing pairs
    index_batch: int = 512  # phase A batch (decoder only: large batches are cheap)
    index_max_length: int = 64  # tokens of an indexing input
    decoder_lr: float = 2e-3  # peak lr of the decoder in phase A
    # Peak lr of the decoder in phase B. A fresh Adam at phase A's peak moves every shared weight of the decoder
    # by about that much a step, whatever its gradient, and undoes what indexing memorised.
    joint_decoder_lr: float = 1e-4
    # Label smoothing of every decoding step in training: a decoder trained to certainty puts whole leaves
    # ahead of each other (a path's score is a sum of log-probabilities), smoothing keeps scores comparable.
    label_smoothing: float = 0.0
    # Document embeddings at the start of indexing: ``random`` (DSI's atomic identifiers) or ``imprint`` (each
    # the normalised mean state its indexing inputs reach under the initial decoder, the rule that adds new
    # documents; then trained like the random ones).
    doc_init: str = "random"
    # Words per indexing crop (min, max); None: the shared pseudo-query span of every arm (span_min..span_max).
    index_words: tuple[int, int] | None = None
    encoder_lr: float | None = None  # None: the shared budget's lr; 0: the encoder stays frozen in phase B
    joint_index: float = 1.0  # phase B: indexing crops per retrieval example in each step
    scale: float = 20.0  # starting logit scale of the cosine classifiers (learned)
    beam: int = 32  # the beam width of the reported numbers
    eval_beams: tuple[int, ...] = (8, 32, 128)  # widths also measured on the final model (same queries)
    # Search temperature: every step's logits divided by it (calibration, Guo et al. 2017: a path's score sums
    # log-probabilities across levels, so an over-confident level decides the order of whole leaves).
    temperature: float = 1.0
    eval_temperatures: tuple[float, ...] = (1.0, 2.0, 4.0)  # also measured at ``beam`` (same model and queries)

    def __post_init__(self) -> None:
        for name in ("dim", "index_pairs", "index_epochs", "index_batch", "index_max_length", "beam"):
            if getattr(self, name) < 1:
                raise ConfigError(f"gr: {name} must be >= 1, found {getattr(self, name)}")
        if not 0 < self.decoder_lr < 1 or not 0 < self.joint_decoder_lr < 1 or (
                self.encoder_lr is not None and not 0 <= self.encoder_lr < 1):
            raise ConfigError("gr: decoder_lr and joint_decoder_lr must be in (0, 1), encoder_lr in [0, 1)")
        if self.index_words is not None and not 1 <= self.index_words[0] <= self.index_words[1]:
            raise ConfigError(f"gr: index_words must be (min, max) with 1 <= min <= max, found {self.index_words}")
        if self.doc_init not in ("random", "imprint"):
            raise ConfigError(f"gr: doc_init must be random or imprint, found {self.doc_init!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"gr: label_smoothing must be in [0, 1), found {self.label_smoothing}")
        if self.temperature <= 0 or any(t <= 0 for t in self.eval_temperatures):
            raise ConfigError("gr: search temperatures must be > 0")
        if self.joint_index < 0 or self.scale <= 0 or any(b < 1 for b in self.eval_beams):
            raise ConfigError("gr: joint_index must be >= 0, scale > 0 and every eval beam >= 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class GenerativeRetriever:
    """Encoder + decoder + the tree's decoding tables + the document ids: ``search`` and ``add``."""

    def __init__(self, encoder: HCEEncoder, decoder: GRDecoder, codes: TreeCodes, doc_ids: list[str],
                 cfg: TrainConfig, gcfg: GRConfig) -> None:
        self.encoder, self.decoder, self.codes, self.doc_ids = encoder, decoder, codes, list(doc_ids)
        self.cfg, self.gcfg = cfg, gcfg
        self.ct = CodeTensors.of(codes, encoder.device)
        self._tables = None

    # ---- persistence (research use: --keep-models, the latency study) ------------------------
    def save(self, folder: str | os.PathLike[str]) -> None:
        """encoder/ (weights + tokenizer), the decoder, the tree with every document (added ones included, as
        the tree format allows: their leaves and ids), and both configs."""
        from hce_serve.formats import atomic

        d = Path(folder)
        (d / "encoder").mkdir(parents=True, exist_ok=True)
        self.encoder.model.save_pretrained(d / "encoder")
        self.encoder.tokenizer.save_pretrained(d / "encoder")
        self.decoder.save(d)
        tree = self.codes.tree
        Tree(tree.parent, tree.centroids, self.codes.doc_leaf.astype(np.int32), self.doc_ids).save(d)
        self.cfg.save(d / "train_config.json")
        atomic.write_json(d / GR_CONFIG, self.gcfg.to_json())

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str = "cpu") -> GenerativeRetriever:
        import json

        from ..config import load_config_file

        d = Path(folder)
        if not (d / GR_CONFIG).is_file():
            raise FormatError(f"{d}: not a generative-retrieval model folder (no {GR_CONFIG})")
        cfg = TrainConfig(**load_config_file(d / "train_config.json"))
        raw = json.loads((d / GR_CONFIG).read_text(encoding="utf-8"))
        gcfg = GRConfig(**{**raw, **{k: tuple(raw[k]) for k in ("eval_beams", "eval_temperatures", "index_words")
                                     if raw.get(k) is not None}})
        encoder = HCEEncoder._from_pretrained(str(d / "encoder"), resolve_base_model(cfg.base_model)[0], device)
        tree = Tree.load(d)
        return cls(encoder, GRDecoder.load(d, device), TreeCodes(tree), tree.doc_ids, cfg, gcfg)

    def tables(self):  # noqa: ANN201 - model.Tables, cached between searches (weights fixed at search time)
        if self._tables is None:
            with torch.no_grad():
                self._tables = self.decoder.tables(self.ct)
        return self._tables

    @torch.no_grad()
    def query_states(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """(n, d) decoder query states of ``texts`` (the encoder in eval mode)."""
        u = torch.from_numpy(self.encoder.encode(list(texts), self.cfg.query_max_length, batch_size, False))
        self.decoder.eval()
        return self.decoder.query_state(u.to(self.encoder.device))

    @torch.no_grad()
    def search_states(self, x: torch.Tensor, k: int, beam: int | None = None, chunk: int = 32,
                      temperature: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores (n, k), document rows (n, k), -1 padded) for query states ``x`` (n, d); ``beam`` and
        ``temperature`` default to the model's."""
        tab, beam = self.tables(), beam or self.gcfg.beam
        temp = self.gcfg.temperature if temperature is None else temperature
        if temp != 1.0:
            tab = dataclasses.replace(tab, scale=tab.scale / temp)
        parts = [beam_search(self.decoder, x[lo : lo + chunk], tab, self.ct, beam, k) for lo in range(0, len(x), chunk)]
        return (torch.cat([p[0] for p in parts]).cpu().numpy(), torch.cat([p[1] for p in parts]).cpu().numpy())

    def search(self, texts: Sequence[str], k: int, beam: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.search_states(self.query_states(texts), k, beam)

    def run(self, queries: dict[str, str], k: int, beam: int | None = None) -> dict[str, dict[str, float]]:
        """A TREC-style run {qid: {doc id: score}} of the beam search's top ``k``."""
        qids = list(queries)
        scores, rows = self.search([queries[q] for q in qids], k, beam)
        return {q: {self.doc_ids[int(r)]: float(s) for r, s in zip(rows[i], scores[i], strict=True) if r >= 0}
                for i, q in enumerate(qids)}

    @torch.no_grad()
    def add(self, ids: Sequence[str], texts: Sequence[str], assigner: HCEEncoder) -> dict[str, Any]:
        """Documents added after training, without retraining: each gets a path by the tree's assignment rule
        (``Tree.assign`` of its embedding under ``assigner``, the encoder the tree was built from, as DSI
        gives a new document the semantic identifier of its nearest clusters) and a document embedding by
        imprinting (the normalised mean decoder state of its indexing inputs at that leaf). No trained
        parameter changes; the new rows are appended, as an index appends vectors."""
        t0 = time.perf_counter()
        leaves = self.codes.tree.assign(assigner.encode(list(texts), self.cfg.doc_max_length, progress=False))
        rows = self.codes.add(leaves.astype(np.int64))
        self.ct = CodeTensors.of(self.codes, self.encoder.device)
        crops, owner = indexing_inputs(list(texts), self.gcfg.index_pairs, self.cfg, salt=len(self.doc_ids),
                                       words=self.gcfg.index_words)
        u = torch.from_numpy(np.concatenate([self.encoder.encode(list(texts), self.cfg.doc_max_length, progress=False),
                                             self.encoder.encode(crops, self.gcfg.index_max_length, progress=False)]))
        dev = self.encoder.device
        owner_t = torch.from_numpy(np.concatenate([np.arange(len(texts)), owner])).to(dev)
        self.decoder.eval()
        self.decoder.imprint(u.to(dev), torch.from_numpy(leaves.astype(np.int64)).to(dev)[owner_t], owner_t,
                             len(texts), self.ct)
        self.doc_ids += list(ids)
        self._tables = None
        return {"added": len(rows), "leaves_used": int(np.unique(leaves).size), "inputs_per_doc": self.gcfg.index_pairs,
                "seconds": round(time.perf_counter() - t0, 2)}


def indexing_inputs(texts: list[str], pairs: int, cfg: TrainConfig, salt: int = 0,
                    words: tuple[int, int] | None = None) -> tuple[list[str], np.ndarray]:
    """(crops, owner row of each): ``pairs - 1`` crops of each of ``texts`` (``words`` (min, max) words each,
    default the shared span_min..span_max; word deletion with ``pseudo_queries`` crop), seeded. The document
    itself is each document's first indexing input; these are the others."""
    corpus = Corpus([str(i) for i in range(len(texts))], texts)
    drop = cfg.crop_drop if cfg.pseudo_queries == "crop" else 0.0
    lo, hi = words or (cfg.span_min_words, cfg.span_max_words)
    out: list[str] = []
    for j in range(1, pairs):
        rng = np.random.default_rng([cfg.seed, 33, salt, j])
        out += pseudo_query_examples(corpus, rng, lo, hi, drop).queries
    return out, np.tile(np.arange(len(texts), dtype=np.int64), pairs - 1)


def encode_cached(encoder: HCEEncoder, texts: list[str], max_length: int, batch_size: int, progress: bool,
                  desc: str, cache_dir: Path | None) -> tuple[np.ndarray, float, bool]:
    """(embeddings, seconds the encode took, whether they came from ``cache_dir``). The starting encoder's
    embeddings depend only on the encoder, the texts, the length and the precision, so runs that share them
    (the arms of one seed) encode once; the seconds of that first encode travel with the cache."""
    import hashlib
    import json

    if cache_dir is None:
        t0 = time.perf_counter()
        return encoder.encode(texts, max_length, batch_size, progress, desc), time.perf_counter() - t0, False
    h = hashlib.sha1(json.dumps([encoder.base_model, max_length, encoder.autocast_bf16, str(encoder.model.dtype)])
                     .encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    path = cache_dir / f"{h.hexdigest()}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if z["emb"].shape[0] == len(texts):
                return z["emb"], float(z["seconds"]), True
    t0 = time.perf_counter()
    emb = encoder.encode(texts, max_length, batch_size, progress, desc)
    secs = time.perf_counter() - t0
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, emb=emb, seconds=np.float64(secs))
    tmp.replace(path)  # a killed run never leaves a half-written cache entry
    return emb, secs, False


def _examples(cfg: TrainConfig, corpus: Corpus, epoch: int, sup: Examples | None) -> Examples:
    """The epoch's retrieval pairs: the supervised pairs, or pseudo-queries redrawn each epoch (as RunState)."""
    if sup is not None:
        return sup
    drop = cfg.crop_drop if cfg.pseudo_queries == "crop" else 0.0
    return pseudo_query_examples(corpus, np.random.default_rng([cfg.seed, epoch, 3]), cfg.span_min_words,
                                 cfg.span_max_words, drop=drop)


def fit_gr(cfg: TrainConfig, gcfg: GRConfig, device: str = "cpu", progress: bool = False,
           on_epoch: Callable[[int, GenerativeRetriever], None] | None = None,
           corpus: Corpus | None = None, cache_dir: Path | None = None) -> tuple[GenerativeRetriever, dict[str, Any]]:
    """Build the tree from the zero-shot encoder, run phase A then phase B; returns the model and a summary
    (steps, seconds and the last statistics of each phase, the tree). ``on_epoch(epoch, model)`` runs after
    phase A (epoch 0) and after each phase-B epoch but the last (a learning curve). ``cache_dir``: keep the
    starting encoder's embeddings (corpus, indexing pairs) there for the next run that needs the same ones."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    corpus = corpus or load_corpus(cfg.data)
    sup = (supervised_examples(cfg.data, cfg.split, corpus, cfg.holdout_queries) if cfg.mode == "supervised"
           else None)
    encoder = HCEEncoder.build(cfg.base_model, device)
    encoder.autocast_bf16 = use_bf16(cfg.precision, device)
    encoder.training_dropout(cfg.attention_dropout)

    t0 = time.perf_counter()
    emb, enc_s, cached = encode_cached(encoder, corpus.texts, cfg.doc_max_length, cfg.encode_batch_size, progress,
                                       "encode corpus", cache_dir)
    t1 = time.perf_counter()
    tree = build_tree(emb, corpus.ids, TreeConfig(cfg.branching, cfg.leaf_size, cfg.tree_balance, cfg.kmeans_iters,
                                                  cfg.seed), progress=progress)
    tree_s = time.perf_counter() - t1 + enc_s
    codes = TreeCodes(tree)
    decoder = GRDecoder(codes.n_nodes, codes.n_docs, encoder.dim, gcfg.dim, gcfg.scale).to(device)
    model = GenerativeRetriever(encoder, decoder, codes, corpus.ids, cfg, gcfg)
    summary: dict[str, Any] = {"tree": tree.summary(), "tree_seconds": round(tree_s, 1), "tree_encode_cached": cached,
                               "wall_seconds_before_indexing": round(time.perf_counter() - t0, 1)}
    summary["phase_a"] = _phase_a(model, corpus, emb, progress, cache_dir)
    if on_epoch is not None:
        on_epoch(0, model)
    summary["phase_b"] = _phase_b(model, corpus, sup, progress, on_epoch)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)  # wall clock, cached encodes not included
    summary["cached_encode_seconds"] = round((enc_s if cached else 0.0) + (
        summary["phase_a"]["encode_seconds"] if summary["phase_a"]["encode_cached"] else 0.0), 1)
    summary["bf16"] = encoder.autocast_bf16
    return model, summary


def _phase_a(model: GenerativeRetriever, corpus: Corpus, doc_emb: np.ndarray, progress: bool,
             cache_dir: Path | None) -> dict[str, Any]:
    """Phase A: the decoder alone on the starting encoder's embeddings of the indexing pairs: ``doc_emb`` (the
    documents themselves, the tree's encode) and the crops, encoded here."""
    cfg, gcfg, dec, ct = model.cfg, model.gcfg, model.decoder, model.ct
    crops, crop_owner = indexing_inputs(corpus.texts, gcfg.index_pairs, cfg, words=gcfg.index_words)
    emb, encode_s, cached = encode_cached(model.encoder, crops, gcfg.index_max_length, cfg.encode_batch_size,
                                          progress, "encode indexing crops", cache_dir)
    t0 = time.perf_counter()
    u = torch.from_numpy(np.concatenate([doc_emb, emb])).to(model.encoder.device)  # (pairs, D)
    docs = torch.from_numpy(np.concatenate([np.arange(len(corpus)), crop_owner])).to(u.device)  # (pairs,)
    if gcfg.doc_init == "imprint":
        dec.eval()
        dec.doc_emb.data.copy_(dec.imprinted(u, ct.paths[docs, -1], docs, len(corpus), ct))
    n_pairs = int(u.shape[0])
    per_epoch = math.ceil(n_pairs / gcfg.index_batch)
    total = per_epoch * gcfg.index_epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    opt = torch.optim.AdamW(dec.parameters(), lr=gcfg.decoder_lr, weight_decay=cfg.weight_decay)
    dec.train()
    bar = step_bar(total, "gr indexing", progress)
    stats: dict[str, float] = {}
    perm = torch.zeros(0, dtype=torch.int64)
    for step in range(total):
        epoch, pos = divmod(step, per_epoch)
        if pos == 0:  # each epoch its own seeded order of the pairs
            perm = torch.from_numpy(np.random.default_rng([cfg.seed, epoch, 34]).permutation(n_pairs)).to(u.device)
        rows = perm[pos * gcfg.index_batch : (pos + 1) * gcfg.index_batch]
        lp = dec.path_log_probs(u[rows], docs[rows], ct, smoothing=gcfg.label_smoothing)  # (b, L + 1)
        loss = -lp.sum(1).mean()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, gcfg.decoder_lr, cfg.warmup_ratio)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats = {"loss": round(loss.item(), 4), "step_nll": [round(float(v), 4) for v in -lp.detach().mean(0)]}
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}")
    bar.close()
    return {"pairs": n_pairs, "pairs_per_doc": gcfg.index_pairs, "epochs": round(total / per_epoch, 3),
            "steps": total, "batch": gcfg.index_batch, "encode_seconds": round(encode_s, 1), "encode_cached": cached,
            "seconds": round(time.perf_counter() - t0 + encode_s, 1), "final": stats}


def _phase_b(model: GenerativeRetriever, corpus: Corpus, sup: Examples | None, progress: bool,
             on_epoch: Callable[[int, GenerativeRetriever], None] | None) -> dict[str, Any]:
    from ..data import epoch_batches

    cfg, gcfg, enc, dec, ct = model.cfg, model.gcfg, model.encoder, model.decoder, model.ct
    t0 = time.perf_counter()
    n_ex = len(_examples(cfg, corpus, 0, sup))
    batch = min(cfg.batch_size, n_ex)
    per_epoch = math.ceil(n_ex / batch)
    total = per_epoch * int(cfg.epochs or 1)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    enc_lr = float(cfg.lr or 5e-5) if gcfg.encoder_lr is None else gcfg.encoder_lr
    train_enc = enc_lr > 0
    groups = [{"params": list(dec.parameters()), "peak": gcfg.joint_decoder_lr}]
    if train_enc:
        groups.append({"params": list(enc.model.parameters()), "peak": enc_lr})
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=gcfg.decoder_lr,
                            weight_decay=cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    n_idx = int(round(gcfg.joint_index * batch))
    enc.model.train(train_enc)
    dec.train()
    bar = step_bar(total, "gr joint", progress)
    stats: dict[str, Any] = {}
    for step in range(total):
        epoch, pos = divmod(step, per_epoch)
        exs = _examples(cfg, corpus, epoch, sup)
        rows = epoch_batches(len(exs), batch, cfg.seed, epoch)[pos]
        rng = np.random.default_rng([cfg.seed, step, 35])
        idx_docs = rng.integers(0, len(corpus), size=n_idx)
        drop = cfg.crop_drop if cfg.pseudo_queries == "crop" else 0.0
        crops = pseudo_query_examples(Corpus([""] * n_idx, [corpus.texts[i] for i in idx_docs]), rng,
                                      *(gcfg.index_words or (cfg.span_min_words, cfg.span_max_words)), drop
                                      ).queries if n_idx else []
        torch.manual_seed(cfg.seed * 100_003 + step)  # dropout draws
        with torch.set_grad_enabled(train_enc):
            q = enc.embed([exs.queries[i] for i in rows], cfg.query_max_length)  # (b, D)
            c = enc.embed(crops, gcfg.index_max_length) if n_idx else q[:0]  # (n_idx, D)
        targets = torch.from_numpy(np.concatenate([exs.doc_rows[rows], idx_docs]).astype(np.int64)).to(q.device)
        lp = dec.path_log_probs(torch.cat([q, c]), targets, ct, smoothing=gcfg.label_smoothing)  # (b + n_idx, L + 1)
        ret, idx = -lp[: len(rows)].sum(1).mean(), (-lp[len(rows) :].sum(1).mean() if n_idx else lp.new_zeros(()))
        loss = ret + idx
        if not torch.isfinite(loss):
            raise ConfigError(f"gr: the loss became {loss.item()} at joint step {step + 1}; try a lower lr")
        scale = lr_at(step, total, 1.0, cfg.warmup_ratio)
        for g, spec in zip(opt.param_groups, groups, strict=True):
            g["lr"] = spec["peak"] * scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        stats = {"loss": round(loss.item(), 4), "retrieval_loss": round(ret.item(), 4),
                 "indexing_loss": round(idx.item(), 4)}
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}")
        if on_epoch is not None and pos == per_epoch - 1 and step + 1 < total:
            model._tables = None
            enc.model.eval()
            dec.eval()
            on_epoch(epoch + 1, model)
            enc.model.train(train_enc)
            dec.train()
    bar.close()
    enc.model.eval()
    dec.eval()
    model._tables = None
    return {"steps": total, "batch": batch, "indexing_crops_per_step": n_idx, "encoder_lr": enc_lr,
            "epochs": round(total / per_epoch, 3), "seconds": round(time.perf_counter() - t0, 1), "final": stats}
