"""Resumable checkpoints in MODEL_DIR/checkpoint/: everything a resumed run needs, no pickled objects.

``model/`` (save_pretrained + tokenizer), ``state.pt`` (step, optimizer state dict, torch RNG state, the
config it was written under: tensors and plain values only, loaded with ``weights_only=True``), the tree in
use (``tree.npz`` + ids), the mined-negative pools (``mined.npy``), the siblings' guard (``guard.npy``) and
further named arrays (``array-NAME.npy``: query-aware sibling pools, the epoch's topic batches). The folder is
written beside the old one and swapped in by renames, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hce_serve.errors import FormatError
from hce_serve.formats.tree import TREE_NAME, Tree

CKPT_DIR = "checkpoint"
STATE = "state.pt"
ARRAY_PREFIX = "array-"


@dataclass
class Checkpoint:
    step: int
    optimizer: dict[str, Any]
    torch_rng: torch.Tensor
    config: dict[str, Any]
    model_dir: Path
    tree: Tree | None
    mined: np.ndarray | None
    guard: np.ndarray | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # further named arrays (query siblings, batches)


def save(out: Path, encoder, optimizer: torch.optim.Optimizer, step: int, config: dict[str, Any],  # noqa: ANN001
         tree: Tree | None, mined: np.ndarray | None, guard: np.ndarray | None = None,
         arrays: dict[str, np.ndarray | None] | None = None) -> Path:
    final = out / CKPT_DIR
    tmp = out / ".tmp-checkpoint"
    old = out / ".old-checkpoint"
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    model = getattr(encoder.model, "module", encoder.model)
    model.save_pretrained(tmp / "model")
    encoder.tokenizer.save_pretrained(tmp / "model")
    if tree is not None:
        tree.save(tmp)
    if mined is not None:
        np.save(tmp / "mined.npy", mined, allow_pickle=False)
    if guard is not None:
        np.save(tmp / "guard.npy", guard, allow_pickle=False)
    for name, arr in (arrays or {}).items():
        if arr is not None:
            np.save(tmp / f"{ARRAY_PREFIX}{name}.npy", arr, allow_pickle=False)
    state = {"step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
             "config": json.dumps(config, sort_keys=True)}
    torch.save(state, tmp / STATE)  # written last: a folder without state.pt is not a checkpoint
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def exists(out: Path) -> bool:
    return (out / CKPT_DIR / STATE).is_file()


def load(out: Path) -> Checkpoint:
    d = out / CKPT_DIR
    if not (d / STATE).is_file():
        raise FormatError(f"{d}: no checkpoint to resume from (state.pt missing)")
    try:
        state = torch.load(d / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise FormatError(f"{d / STATE}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    tree = Tree.load(d) if (d / TREE_NAME).is_file() else None
    mined = np.load(d / "mined.npy", allow_pickle=False) if (d / "mined.npy").is_file() else None
    guard = np.load(d / "guard.npy", allow_pickle=False) if (d / "guard.npy").is_file() else None
    arrays = {f.name[len(ARRAY_PREFIX) : -len(".npy")]: np.load(f, allow_pickle=False)
              for f in sorted(d.glob(f"{ARRAY_PREFIX}*.npy"))}
    return Checkpoint(int(state["step"]), state["optimizer"], state["torch_rng"], json.loads(state["config"]),
                      d / "model", tree, mined, guard, arrays)
