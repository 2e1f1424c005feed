"""``hce-train distill-query``: a shallow query encoder that lands where the full encoder puts the query.

Documents are encoded once, offline, by the full encoder; queries are encoded on every request. The
student is ``L`` of the teacher's transformer layers (same tokenizer, width and pooling; which ones:
``init_layers``, by default layer 0 and the top L - 1), so it starts close and maps into the same space.
It is trained, with the document side frozen, on

    L = w_cos * (1 - cos(s(q), t(q)))                                     # land on the teacher's point
      + w_kl  * KL( softmax(t(q) . D_pool / tau) || softmax(s(q) . D_pool / tau) )   # rank like it

where ``t`` is the teacher's query embedding and ``D_pool`` the fixed, precomputed embeddings of the
documents the teacher ranks highest for the batch's queries (each query's top ``pool_k``, pooled over
the batch): the listwise term spends the student's capacity where rankings are decided. The queries are
the data's training queries (when it has a train split) and pseudo-queries cropped from the corpus, so
the method needs no labels and works on a new corpus. Batches hold queries of similar length
(``length_grouped``), so short crops are not padded to long ones.

QMODEL_DIR is a plain encoder folder with a card (``extra.role = "query_encoder"``); MODEL_DIR's card then
records the pair in ``extra.query_encoder`` so ``hce-export`` exports and validates both graphs.

The teacher may also be any plain encoder folder ``hce-export`` accepts (an untrained base model, say). Such a
folder has no card to record the pair in, and it may not be the user's to write (a package's site-packages
folder), so nothing is written there: ``--out`` becomes the MODEL_DIR instead, holding a copy of the teacher
with its derived card and the query encoder in ``query_encoder/``; ``hce-export onnx --model OUT`` exports both.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hce_serve.errors import ConfigError, DataError
from hce_serve.formats import beir
from hce_serve.formats.card import CARD_NAME, ModelCard

from .config import DistillConfig
from .data import load_corpus, pseudo_query_examples
from .evaluate import exact_topk
from .loop import lr_at, pick_device
from .model import HCEEncoder, use_bf16
from .progress import step_bar

log = logging.getLogger(__name__)

PLAIN_QUERY_DIR = "query_encoder"  # with a plain teacher folder: the query encoder's place inside --out


def pick_layers(rule: str, layers: int, depth: int) -> list[int]:
    """The teacher layers (0-based, ascending) a ``layers``-deep student starts from: ``bottom`` the first
    L; ``ends`` layer 0 and the top L - 1, which keeps the layers that shape the output space; ``top`` the
    last L; or an explicit "I,J,..." list."""
    if layers >= depth:
        raise ConfigError(f"--layers {layers}: the model has only {depth} layers; a student needs fewer")
    if rule == "bottom":
        return list(range(layers))
    if rule == "ends":
        return [0, *range(depth - layers + 1, depth)]
    if rule == "top":
        return list(range(depth - layers, depth))
    idx = [int(i) for i in rule.split(",")]
    if len(idx) != layers or sorted(set(idx)) != idx or not 0 <= idx[0] <= idx[-1] < depth:
        raise ConfigError(f"--init-layers {rule}: want {layers} distinct ascending indices in 0..{depth - 1}")
    return idx


def length_grouped(order: np.ndarray, lengths: list[int], batch_size: int, rng: np.random.Generator,
                   mega: int = 50) -> list[np.ndarray]:
    """``order`` (already shuffled) cut into batches of similar length, to pad less: each run of ``mega``
    batches is sorted by length (characters) and cut, then the batches are shuffled (HF's group_by_length).
    Every index lands in exactly one batch; a batch's queries stay a random draw of one length band."""
    out: list[np.ndarray] = []
    span = batch_size * mega
    for lo in range(0, len(order), span):
        chunk = order[lo : lo + span]
        chunk = chunk[np.argsort([-lengths[i] for i in chunk], kind="stable")]
        out += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def shallow_copy(teacher: HCEEncoder, layers: int, init: str) -> tuple[HCEEncoder, list[int]]:
    """A deep copy of the teacher that keeps ``layers`` of its transformer layers, chosen by ``init``
    (see ``pick_layers``); returns the student and the kept teacher-layer indices."""
    model = copy.deepcopy(getattr(teacher.model, "module", teacher.model))
    stack = getattr(getattr(model, "encoder", None), "layer", None)
    if stack is None:
        raise ConfigError(f"{type(model).__name__}: no encoder.layer stack to cut (BERT-like models only)")
    kept = pick_layers(init, layers, len(stack))
    model.encoder.layer = type(stack)([stack[i] for i in kept])
    model.config.num_hidden_layers = layers
    return HCEEncoder(model, teacher.tokenizer, teacher.base_model, teacher.device), kept


def training_queries(data_dir: Path, corpus_texts: list[str], cfg: DistillConfig, epoch: int) -> list[str]:
    """The train split's queries (if any; each ``train_query_repeats`` times) and ``cfg.crops_per_doc`` cropped
    pseudo-queries per document for ``epoch`` (at most ``max_pseudo``, the documents sampled), each
    ``pseudo_words`` words long."""
    texts: list[str] = []
    qrels = data_dir / "qrels" / "train.tsv"
    if qrels.is_file() and (data_dir / "queries.jsonl").is_file():
        wanted = set(beir.load_qrels(qrels))
        train = [t for q, t in beir.load_queries(data_dir / "queries.jsonl").items() if q in wanted]
        texts += train * cfg.train_query_repeats
    from .data import Corpus

    rng = np.random.default_rng([cfg.seed, epoch, 7])
    per_doc = cfg.crops_per_doc(len(corpus_texts))
    rows = np.concatenate([rng.permutation(len(corpus_texts)) for _ in range(per_doc)])[: cfg.max_pseudo]
    sub = Corpus([str(r) for r in rows], [corpus_texts[r] for r in rows])
    texts += pseudo_query_examples(sub, rng, *cfg.pseudo_words, drop=0.1).queries  # query-sized crops, words dropped
    return texts


def distill(model_dir: str | os.PathLike[str], out: str | os.PathLike[str], cfg: DistillConfig,
            data: str | os.PathLike[str] | None = None, overwrite: bool = False, progress: bool = True,
            doc_emb: np.ndarray | None = None) -> dict[str, Any]:
    """Train the shallow query encoder, write QMODEL_DIR, record the pair in MODEL_DIR's card.

    ``doc_emb`` (docs, D): the teacher's corpus embeddings when the caller already has them (row i = the
    corpus file's document i, at the card's max_length; or only its non-empty documents, in file order);
    otherwise the corpus is encoded here. Documents with empty title and text are left out (warned, counted).
    """
    import torch
    import torch.nn.functional as F

    mdir, out_dir = Path(model_dir), Path(out)
    plain = mdir.is_dir() and not (mdir / CARD_NAME).is_file()  # a plain HF/sentence-transformers folder
    card = _plain_card(mdir) if plain else ModelCard.load(mdir)
    # home: the MODEL_DIR whose card records the pair (a plain teacher's own folder is never written)
    home, qdir = (out_dir, out_dir / PLAIN_QUERY_DIR) if plain else (mdir, out_dir)
    data_dir = Path(data) if data else _trained_on(mdir)
    _check_out(out_dir, mdir, overwrite)
    if plain:
        log.info("%s is a plain encoder folder: %s becomes the MODEL_DIR of the pair (a copy of the teacher, "
                 "its card, the query encoder in %s/); export it with `hce-export onnx --model %s`",
                 mdir, out_dir, PLAIN_QUERY_DIR, out_dir)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    teacher = HCEEncoder.load(mdir, device)
    teacher.autocast_bf16 = use_bf16(cfg.precision, device)
    corpus = load_corpus(data_dir)
    if doc_emb is not None and corpus.empty_rows and doc_emb.shape[0] == len(corpus) + len(corpus.empty_rows):
        doc_emb = np.delete(doc_emb, corpus.empty_rows, axis=0)  # file-aligned: the empty documents' rows go
    if doc_emb is not None and doc_emb.shape != (len(corpus), card.dim):
        raise DataError(f"doc_emb has shape {doc_emb.shape}, expected ({len(corpus)}, {card.dim})")
    d_emb = torch.from_numpy(np.ascontiguousarray(doc_emb, np.float32) if doc_emb is not None else
                             teacher.encode(corpus.texts, card.max_length, 128, progress, "teacher: corpus"))
    student, kept = shallow_copy(teacher, cfg.layers, cfg.init_layers)
    student.autocast_bf16 = teacher.autocast_bf16
    student.training_dropout(0.0)
    student.model.train()
    opt = torch.optim.AdamW(student.model.parameters(), lr=cfg.lr, weight_decay=0.01)
    first = training_queries(data_dir, corpus.texts, cfg, 0)  # epoch 0's list sizes the schedule, then trains
    per_epoch = math.ceil(len(first) * (1 - cfg.heldout) / cfg.batch_size)
    total, step, heldout, stats = per_epoch * cfg.epochs, 0, set(), {}
    bar = step_bar(total, f"distill L={cfg.layers}", progress)  # no estimate from the first steps
    for epoch in range(cfg.epochs):
        texts = first if epoch == 0 else training_queries(data_dir, corpus.texts, cfg, epoch)
        t_q = teacher.encode(texts, card.query_max_length, 128, progress, "teacher: queries")
        _, top = exact_topk(t_q, d_emb.numpy(), cfg.pool_k)
        order = np.random.default_rng([cfg.seed, epoch, 8]).permutation(len(texts))
        if epoch == 0:  # held out for good: a training query never trains in a later epoch either
            heldout = {texts[i] for i in order[: int(len(order) * cfg.heldout)]}
        order = np.array([i for i in order if texts[i] not in heldout], np.int64)
        if cfg.length_grouped:  # batches of one length band, in random order: a batch pads to its longest
            rng = np.random.default_rng([cfg.seed, epoch, 9])
            batches = length_grouped(order, [len(t) for t in texts], cfg.batch_size, rng)
        else:
            batches = [order[lo : lo + cfg.batch_size] for lo in range(0, len(order), cfg.batch_size)]
        for idx in batches:
            if step >= total:
                break
            s = student.embed([texts[i] for i in idx], card.query_max_length)  # (b, D)
            t = torch.from_numpy(t_q[idx]).to(s.device)
            pool = torch.from_numpy(np.unique(top[idx])).to(s.device)
            docs = d_emb.to(s.device)[pool]  # (P, D), fixed
            cos = 1 - (s * t).sum(-1).mean()
            kl = F.kl_div(F.log_softmax(s @ docs.T / cfg.tau, -1), F.log_softmax(t @ docs.T / cfg.tau, -1),
                          log_target=True, reduction="batchmean")
            loss = cfg.cos_weight * cos + cfg.kl_weight * kl
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, cfg.lr, cfg.warmup_ratio)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.model.parameters(), 1.0)
            opt.step()
            step += 1
            stats = {"loss": float(loss.detach()), "cos": float(1 - cos.detach()), "kl": float(kl.detach())}
            bar.update(1)
            bar.set_postfix(cos=f"{stats['cos']:.3f}")
    bar.close()
    fidelity = _fidelity(teacher, student, sorted(heldout), d_emb.numpy(), card.query_max_length)
    summary = {"layers": cfg.layers, "teacher_layers": int(teacher.model.config.num_hidden_layers),
               "init_from": kept, "steps": step,
               "seconds": round(time.perf_counter() - t_start, 1), "final": stats, "heldout": fidelity,
               "data": str(data_dir.resolve()), "config": asdict(cfg),
               "crops_per_doc": cfg.crops_per_doc(len(corpus.texts)),
               "skipped_empty": len(corpus.empty_ids)}
    _write(student, teacher, card, home, qdir, out_dir, summary, overwrite, copy_teacher=plain)
    return {**summary, "out": str(out_dir), "model_dir": str(home), "query_dir": str(qdir)}


def _plain_card(mdir: Path) -> ModelCard:
    """The card ``hce-export`` derives for a plain encoder folder (same checks, same lengths and pooling)."""
    from hce_export.source import load_source

    card = load_source(mdir).card
    if card.pooling != "mean":  # the student and teacher embed with HCEEncoder, which mean-pools
        raise ConfigError(f"{mdir}: a {card.pooling}-pooled encoder; distill-query distils mean-pooled ones")
    return card


def _check_out(out: Path, mdir: Path, overwrite: bool) -> None:
    """``out`` is replaced as a whole with --overwrite: it must not be the teacher's folder or hold it."""
    out_r, model_r = out.resolve(), mdir.resolve()
    if out_r == model_r or out_r in model_r.parents:
        raise ConfigError(f"{out}: the output folder must not be --model's folder or contain it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: already exists; pass --overwrite to replace it")


def _trained_on(mdir: Path) -> Path:
    cfg = mdir / "train_config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8")).get("data")
        if data and Path(data).is_dir():
            return Path(data)
    raise DataError(f"{mdir}: pass --data (a BEIR folder whose corpus the query encoder is distilled on)")


def _fidelity(teacher: HCEEncoder, student: HCEEncoder, texts: list[str], d_emb: np.ndarray, qlen: int) -> dict:
    """Held-out queries: cosine to the teacher's embedding and overlap of the two top-10 lists."""
    if not texts:
        return {}
    t = teacher.encode(texts, qlen, 128, False)
    s = student.encode(texts, qlen, 128, False)
    cos = (t * s).sum(1)
    _, tt = exact_topk(t, d_emb, 10)
    _, st = exact_topk(s, d_emb, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(tt.tolist(), st.tolist(), strict=True)])
    return {"queries": len(texts), "cosine_mean": round(float(cos.mean()), 4), "cosine_min": round(float(cos.min()), 4),
            "top10_overlap": round(float(overlap), 4)}


def _write(student: HCEEncoder, teacher: HCEEncoder, card: ModelCard, home: Path, qdir: Path, out: Path,
           summary: dict[str, Any], overwrite: bool, copy_teacher: bool) -> None:
    """QMODEL_DIR, then the pair in ``home``'s card; ``copy_teacher``: ``home`` (= ``out``) is written whole,
    the teacher's weights and tokenizer with the card last."""
    import shutil

    if out.exists() and overwrite:
        shutil.rmtree(out)
    qcard = card.replace(tree=None, onnx=None, extra={"role": "query_encoder", "teacher": str(home.resolve()),
                                                      "distill": summary})
    student.save(qdir, qcard)
    rel = os.path.relpath(qdir.resolve(), home.resolve())
    pair = {"path": rel, "layers": summary["layers"], "heldout": summary["heldout"]}
    paired = card.replace(extra={**card.extra, "query_encoder": pair})
    if copy_teacher:
        teacher.save(home, paired)
    else:
        paired.save(home)  # the card is replaced atomically
