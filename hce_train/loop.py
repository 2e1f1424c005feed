"""``hce-train fit``: the co-training loop (EM: encode corpus -> build tree -> train with it fixed -> ...).

Writes MODEL_DIR per DESIGN §6: weights + tokenizer, tree.npz matching the FINAL encoder, the resolved
train_config.json, train_log.jsonl, a resumable checkpoint/, and hce_model.json last.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hce_serve.card import CARD_NAME, ModelCard
from hce_serve.errors import ConfigError
from hce_serve.tree import Tree

from . import checkpoint, dist
from .config import REBUILD_EPOCH, TrainConfig
from .data import Corpus, Examples, epoch_batches, load_corpus, pseudo_query_examples, supervised_examples
from .model import HCEEncoder, resolve_base_model
from .negatives import TreeIndex, mine_pools
from .step import StepContext, train_step
from .tree_builder import TreeConfig, build_tree

log = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"
CONFIG_NAME = "train_config.json"
MODEL_MARKERS = (CARD_NAME, checkpoint.CKPT_DIR, CONFIG_NAME, "model.safetensors", "pytorch_model.bin")


def pick_device(name: str) -> str:
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device")
    return "cuda" if name == "cuda" or (name == "auto" and cuda) else "cpu"


def lr_at(step: int, total: int, base: float, warmup_ratio: float) -> float:
    """Linear warmup over the first ``warmup_ratio`` of the steps, then linear decay to zero."""
    warm = max(1, int(total * warmup_ratio))
    if step < warm:
        return base * (step + 1) / warm
    return base * max(0.0, (total - step) / max(1, total - warm))


def prepare_out(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber a model unless asked; a run in progress never leaves a card behind."""
    if resume:
        if not checkpoint.exists(out):
            raise ConfigError(f"{out}: nothing to resume (no checkpoint/state.pt); drop --resume to start fresh")
    elif out.exists() and any((out / m).exists() for m in MODEL_MARKERS):
        if not overwrite:
            raise ConfigError(f"{out}: already holds a model; pass --overwrite to replace it or --resume to continue")
        shutil.rmtree(out)
    elif out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD_NAME).unlink(missing_ok=True)


class _Run:
    """State shared by the phases of one fit (kept in one place so the phases stay small functions)."""

    def __init__(self, cfg: TrainConfig, env: dist.DistEnv, device: str, progress: bool) -> None:
        self.cfg, self.env, self.device = cfg, env, device
        self.progress = progress and env.is_main
        self.out = Path(cfg.out)
        self.corpus: Corpus = load_corpus(cfg.data)
        self._sup = supervised_examples(cfg.data, cfg.split, self.corpus) if cfg.mode == "supervised" else None
        self._epoch_cache: dict[int, Examples] = {}
        self.last_embeddings: np.ndarray | None = None  # corpus embeddings behind the latest tree

    def examples(self, epoch: int) -> Examples:
        if self._sup is not None:
            return self._sup
        if epoch not in self._epoch_cache:
            self._epoch_cache = {epoch: pseudo_query_examples(
                self.corpus, np.random.default_rng([self.cfg.seed, epoch, 3]),
                self.cfg.span_min_words, self.cfg.span_max_words)}
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
        return dist.gather_rows(local, self.env)

    def build(self, encoder: HCEEncoder, step: int) -> Tree:
        """Re-encode the corpus and rebuild the tree (on rank 0, broadcast to the others)."""
        t0 = time.perf_counter()
        emb = self.encode_corpus(encoder)
        self.last_embeddings = emb
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


def fit(cfg: TrainConfig, overwrite: bool = False, resume: bool = False, progress: bool = True,
        keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train per ``cfg`` and write MODEL_DIR; returns a summary (steps, seconds, final loss, tree).

    ``keep``, when given, receives ``keep["corpus_embeddings"]``: the final encoder's (docs, D) corpus
    embeddings that the saved tree was built from (lets an evaluation skip re-encoding the corpus).
    """
    kind = pick_device(cfg.device)
    env = dist.init(kind)
    device = f"cuda:{env.local_rank}" if kind == "cuda" else "cpu"
    try:
        summary = _fit(cfg, env, device, overwrite, resume, progress, keep)
    except BaseException:
        dist.shutdown(env, clean=False)
        raise
    dist.shutdown(env)
    return summary


def _fit(cfg: TrainConfig, env: dist.DistEnv, device: str, overwrite: bool, resume: bool,
         progress: bool, keep: dict[str, Any] | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    if env.is_main:
        prepare_out(out, overwrite, resume)
    dist.barrier(env)
    run = _Run(cfg, env, device, progress)
    ckpt = checkpoint.load(out) if resume else None
    if ckpt is not None:
        _check_resumable(ckpt.config, cfg)
    recorded_base = resolve_base_model(cfg.base_model)[0]
    if ckpt is not None:
        encoder = HCEEncoder._from_pretrained(str(ckpt.model_dir), recorded_base, device)
    else:
        encoder = HCEEncoder.build(cfg.base_model, device)
    encoder.autocast_bf16 = device.startswith("cuda")
    encoder.model.train()

    n_ex = len(run.examples(0))
    batch = min(cfg.batch_size, n_ex) // env.world * env.world
    if batch < env.world:
        raise ConfigError(f"{n_ex} training examples cannot fill a batch on each of {env.world} processes")
    if batch != cfg.batch_size:
        log.warning("batch size %d -> %d (%d examples, %d processes)", cfg.batch_size, batch, n_ex, env.world)
    per_epoch = math.ceil(n_ex / batch)
    total = per_epoch * int(cfg.epochs or 1)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)

    optimizer = torch.optim.AdamW(encoder.model.parameters(), lr=float(cfg.lr or 5e-5), weight_decay=cfg.weight_decay)
    ctx = StepContext(cfg, encoder, optimizer, run.corpus, env)
    step, tree, tree_step = 0, None, -1
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.optimizer)
        torch.set_rng_state(ckpt.torch_rng)
        step, tree, ctx.mined = ckpt.step, ckpt.tree, ckpt.mined
        tree_step = int(ckpt.config.get("_tree_step", -1))
        _truncate_log(out / LOG_NAME, step, env)
    if env.is_main:
        cfg.save(out / CONFIG_NAME)
    if cfg.negatives == "mined" and ctx.mined is None:
        ctx.mined = _mine(run, encoder, run.examples(0))
    if tree is not None:
        ctx.tree, ctx.centroids = TreeIndex(tree), torch.from_numpy(tree.centroids).to(device)

    bar = tqdm(total=total, initial=step, desc=f"fit ({cfg.negatives})", unit="step", disable=not run.progress)
    stats: dict[str, float] = {}
    while step < total:
        epoch, pos = divmod(step, per_epoch)
        exs = run.examples(epoch)
        if cfg.negatives == "hce" and _rebuild_due(cfg.rebuild_every, step, pos, tree_step, tree):
            tree, tree_step = run.build(encoder, step), step
            ctx.tree, ctx.centroids = TreeIndex(tree), torch.from_numpy(tree.centroids).to(device)
        t0 = time.perf_counter()
        lr = lr_at(step, total, float(cfg.lr or 5e-5), cfg.warmup_ratio)
        stats = train_step(ctx, exs, epoch_batches(len(exs), batch, cfg.seed, epoch)[pos], step, lr)
        step += 1
        if step % cfg.log_every == 0 or step == total:
            run.log_row({"step": step, "epoch": epoch, "lr": lr, "seconds": round(time.perf_counter() - t0, 3),
                         **{k: round(v, 5) for k, v in stats.items()}})
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['inbatch_acc']:.2f}")
        if step == total or pos == per_epoch - 1 or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            if env.is_main:
                state_cfg = {**cfg.to_json(), "_tree_step": tree_step, "_batch": batch}
                checkpoint.save(out, encoder, optimizer, step, state_cfg, tree, ctx.mined)
            dist.barrier(env)
    bar.close()

    # The saved tree must match the final encoder: reuse the last one only if no step ran since.
    if tree is None or tree_step != step or run.last_embeddings is None:
        tree = run.build(encoder, step)
    if keep is not None:
        keep["corpus_embeddings"] = run.last_embeddings
    if env.is_main:
        tree.save(out)
        card = ModelCard(dim=encoder.dim, base_model=recorded_base, pooling="mean", normalize=True,
                         max_length=cfg.doc_max_length, query_max_length=cfg.query_max_length, tree=tree.summary(),
                         extra={"mode": cfg.mode, "negatives": cfg.negatives, "steps": step,
                                "processes": env.world, "global_batch": batch})
        encoder.save(out, card)  # weights, tokenizer, then the card last
    dist.barrier(env)
    return {"steps": step, "seconds": round(time.perf_counter() - t_start, 1), "final": stats,
            "tree": tree.summary(), "out": str(out)}


def _rebuild_due(every: int, step: int, pos_in_epoch: int, tree_step: int, tree: Tree | None) -> bool:
    if tree is None:
        return True
    if tree_step == step:
        return False
    if every == REBUILD_EPOCH:
        return pos_in_epoch == 0
    return every > 0 and step % every == 0


def _mine(run: _Run, encoder: HCEEncoder, exs: Examples) -> np.ndarray:
    """Pools of start-encoder ranks [lo, hi) per example, positives removed."""
    cfg = run.cfg
    d_emb = run.encode_corpus(encoder)
    q_emb = encoder.encode(exs.queries, cfg.query_max_length, cfg.encode_batch_size, run.progress, "encode queries")
    return mine_pools(q_emb, d_emb, exs.positives, cfg.mined_rank_lo, cfg.mined_rank_hi)


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """A resumed run must see the same data order: the knobs that shape batches must not change."""
    for key in ("data", "split", "mode", "negatives", "seed", "batch_size", "negatives_per_query"):
        if saved.get(key) != getattr(cfg, key):
            raise ConfigError(f"--resume: {key} was {saved.get(key)!r} in the checkpoint, now {getattr(cfg, key)!r}")


def _truncate_log(path: Path, step: int, env: dist.DistEnv) -> None:
    """Drop log rows written after the checkpoint (a crashed run's tail) so the resumed log is seamless."""
    if not env.is_main or not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
