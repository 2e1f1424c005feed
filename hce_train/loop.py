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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hce_serve.errors import ConfigError
from hce_serve.formats.card import CARD_NAME, ModelCard

from . import checkpoint, dist, refresh
from .config import TrainConfig
from .data import epoch_batches, topic_batches
from .model import HCEEncoder, resolve_base_model, use_bf16
from .negatives import TreeIndex
from .progress import step_bar
from .refresh import LOG_NAME, RunState
from .step import StepContext, train_step

log = logging.getLogger(__name__)

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


def fit(cfg: TrainConfig, overwrite: bool = False, resume: bool = False, progress: bool = True,
        keep: dict[str, Any] | None = None,
        on_epoch: Callable[[int, HCEEncoder], None] | None = None) -> dict[str, Any]:
    """Train per ``cfg`` and write MODEL_DIR; returns a summary (steps, seconds, final loss, tree).

    ``keep``, when given, receives ``keep["corpus_embeddings"]``: the final encoder's (docs, D) corpus
    embeddings that the saved tree was built from (lets an evaluation skip re-encoding the corpus).
    ``on_epoch(epoch, encoder)`` runs after each epoch's last step but the run's last (e.g. a learning curve).
    """
    kind = pick_device(cfg.device)
    env = dist.init(kind)
    device = f"cuda:{env.local_rank}" if kind == "cuda" else "cpu"
    try:
        summary = _fit(cfg, env, device, overwrite, resume, progress, keep, on_epoch)
    except BaseException:
        dist.shutdown(env, clean=False)
        raise
    dist.shutdown(env)
    return summary


def _fit(cfg: TrainConfig, env: dist.DistEnv, device: str, overwrite: bool, resume: bool,
         progress: bool, keep: dict[str, Any] | None,
         on_epoch: Callable[[int, HCEEncoder], None] | None = None) -> dict[str, Any]:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    if env.is_main:
        prepare_out(out, overwrite, resume)
    dist.barrier(env)
    run = RunState(cfg, env, device, progress)
    ckpt = checkpoint.load(out) if resume else None
    if ckpt is not None:
        _check_resumable(ckpt.config, cfg)
    recorded_base = resolve_base_model(cfg.base_model)[0]
    if ckpt is not None:
        encoder = HCEEncoder._from_pretrained(str(ckpt.model_dir), recorded_base, device)
    else:
        encoder = HCEEncoder.build(cfg.base_model, device)
    encoder.autocast_bf16 = use_bf16(cfg.precision, device)
    encoder.training_dropout(cfg.attention_dropout)
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
    step, tree, tree_step = 0, None, -1  # tree_step: the step of the latest refresh (tree, guard or re-mine)
    # tree-topic batches are planned from the tree at each epoch's start; an epoch may then take a few more
    # batches than ``per_epoch``. The step budget stays ``total`` (every arm trains as many steps), so the
    # last epoch can end early. Random batches keep the step -> (epoch, position) arithmetic.
    topic = cfg.batching == "tree-topic"
    plan: list[np.ndarray] | None = None
    epoch, pos = 0, 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.optimizer)
        torch.set_rng_state(ckpt.torch_rng)
        step, tree, ctx.mined, ctx.guard = ckpt.step, ckpt.tree, ckpt.mined, ckpt.guard
        ctx.sib_pool = ckpt.arrays.get("sib_pool")
        tree_step = int(ckpt.config.get("_tree_step", -1))
        if topic and "plan" in ckpt.arrays:  # where the checkpoint stood in its epoch's topic batches
            plan, epoch, pos = list(ckpt.arrays["plan"]), int(ckpt.config["_epoch"]), int(ckpt.config["_pos"])
        _truncate_log(out / LOG_NAME, step, env)
    if env.is_main:
        cfg.save(out / CONFIG_NAME)
    if cfg.uses_mined and not cfg.refresh_mined and ctx.mined is None:
        ctx.mined = refresh.mine(run, encoder, run.examples(0))
    if tree is not None:
        ctx.tree, ctx.centroids = TreeIndex(tree), torch.from_numpy(tree.centroids).to(device)
    if ckpt is not None and cfg.negative_encoding == "cached":  # what the cached negatives come from
        refresh.keep_corpus(ctx, run.encode_corpus(encoder), cfg)

    bar = step_bar(total, f"fit ({cfg.negatives})", run.progress, initial=step)  # no estimate from the first steps
    stats: dict[str, float] = {}
    while step < total:
        if not topic:
            epoch, pos = divmod(step, per_epoch)
        elif plan is not None and pos >= len(plan):  # the planned epoch is done
            epoch, pos, plan = epoch + 1, 0, None
        exs = run.examples(epoch)
        epoch_len = len(plan) if plan is not None else per_epoch
        if refresh.refreshes(cfg) and refresh.due(cfg.rebuild_every, step, pos, tree_step, epoch_len):
            tree, tree_step = refresh.refresh(run, ctx, encoder, step, exs) or tree, step
        if topic and plan is None:
            assert ctx.tree is not None
            plan = topic_batches(ctx.tree.top_nodes(exs.doc_rows), batch, cfg.seed, epoch)
            epoch_len = len(plan)
            run.log_row({"event": "topic_batches", "step": step, "epoch": epoch, "batches": epoch_len,
                         "topics": int(np.unique(ctx.tree.top_nodes(exs.doc_rows)).size)})
        rows = plan[pos] if plan is not None else epoch_batches(len(exs), batch, cfg.seed, epoch)[pos]
        t0 = time.perf_counter()
        lr = lr_at(step, total, float(cfg.lr or 5e-5), cfg.warmup_ratio)
        # Centroid levels annealed: their weights fall linearly to 0 over the first level_anneal_epochs.
        scale = (max(0.0, 1.0 - (epoch + pos / epoch_len) / cfg.level_anneal_epochs)
                 if cfg.level_anneal_epochs > 0 else 1.0)
        stats = train_step(ctx, exs, rows, step, lr, level_scale=scale)
        step += 1
        last_of_epoch = pos == epoch_len - 1
        pos += 1
        if step % cfg.log_every == 0 or step == total:
            extra = {"level_scale": round(scale, 4)} if cfg.level_anneal_epochs > 0 else {}
            run.log_row({"step": step, "epoch": epoch, "lr": lr, "seconds": round(time.perf_counter() - t0, 3),
                         **extra, **{k: round(v, 5) for k, v in stats.items()}})
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['inbatch_acc']:.2f}")
        if on_epoch is not None and last_of_epoch and step < total:
            on_epoch(epoch + 1, encoder)
        if step == total or last_of_epoch or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            if env.is_main:
                state_cfg = {**cfg.to_json(), "_tree_step": tree_step, "_batch": batch, "_epoch": epoch, "_pos": pos}
                plan_arr = np.stack(plan) if plan is not None else None
                checkpoint.save(out, encoder, optimizer, step, state_cfg, tree, ctx.mined, ctx.guard,
                                {"sib_pool": ctx.sib_pool, "plan": plan_arr})
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
            "bf16": encoder.autocast_bf16,
            "epochs_done": round(epoch + pos / len(plan) if plan is not None else step / per_epoch, 3),
            "tree": tree.summary(),
            "skipped_empty": len(run.corpus.empty_ids), "out": str(out)}


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """A resumed run must see the same data order: the knobs that shape batches must not change."""
    for key in ("data", "split", "mode", "negatives", "seed", "batch_size", "negatives_per_query"):
        if saved.get(key) != getattr(cfg, key):
            raise ConfigError(f"--resume: {key} was {saved.get(key)!r} in the checkpoint, now {getattr(cfg, key)!r}")
    # Knobs added later: a checkpoint written before them ran with their first value.
    for key, before in (("batching", "random"), ("holdout_queries", [])):
        was, now = saved.get(key, before), getattr(cfg, key)
        if was != (list(now) if isinstance(now, tuple) else now):
            raise ConfigError(f"--resume: {key} was {was!r} in the checkpoint, now {now!r}")


def _truncate_log(path: Path, step: int, env: dist.DistEnv) -> None:
    """Drop log rows written after the checkpoint (a crashed run's tail) so the resumed log is seamless."""
    if not env.is_main or not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
