"""What an export starts from: a MODEL_DIR written by ``hce-train fit`` or a plain Hugging Face encoder folder.

A MODEL_DIR carries its card (``hce_model.json``); a plain Hugging Face / sentence-transformers folder gets
one derived from its config files, so users can export a base model too.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hce_serve.defaults import DOC_MAX_LENGTH, QUERY_MAX_LENGTH
from hce_serve.errors import FormatError
from hce_serve.formats.card import CARD_NAME, ModelCard

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = DOC_MAX_LENGTH  # serving's defaults, defined once in hce_serve.defaults
DEFAULT_QUERY_MAX_LENGTH = QUERY_MAX_LENGTH
TREE_FILES = ("tree.npz", "tree_doc_ids.txt")
# Files serving needs besides tokenizer.json (special tokens, casing); copied when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Source:
    """A checked model folder and the card that describes it (read or derived)."""

    path: Path
    card: ModelCard
    has_card: bool
    has_tree: bool
    config: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a JSON object")
    return obj


def _position_limit(config: dict[str, Any], folder: Path) -> int | None:
    """The longest input the model accepts (BERT-like position tables; RoBERTa reserves 2 slots)."""
    n = config.get("max_position_embeddings")
    if not isinstance(n, int) or n <= 0:
        return None
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        n -= 2
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.is_file():
        m = _read_json(tok_cfg).get("model_max_length")
        if isinstance(m, int) and 0 < m < n:
            n = m
    return n


def derive_card(folder: Path, config: dict[str, Any]) -> ModelCard:
    """A card for a plain HF / sentence-transformers folder (no ``hce_model.json``)."""
    dim = config.get("hidden_size") or config.get("dim") or config.get("d_model")
    if not isinstance(dim, int):
        raise FormatError(f"{folder}/config.json: no hidden_size; is this a text encoder?")
    pooling = "mean"
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        p = _read_json(pool_cfg)
        if p.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif not p.get("pooling_mode_mean_tokens", True):
            raise FormatError(f"{pool_cfg}: only mean or CLS pooling can be exported, found {p}")
    max_length = DEFAULT_MAX_LENGTH
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.is_file():
        m = _read_json(st_cfg).get("max_seq_length")
        if isinstance(m, int) and m > 0:
            max_length = m
    limit = _position_limit(config, folder)
    if limit is not None:
        max_length = min(max_length, limit)
    return ModelCard(
        dim=dim,
        base_model=str(folder),
        pooling=pooling,
        normalize=True,
        max_length=max_length,
        query_max_length=min(DEFAULT_QUERY_MAX_LENGTH, max_length),
    )


def load_source(model_dir: str | os.PathLike[str]) -> Source:
    """Check that ``model_dir`` is an encoder folder and read or derive its card."""
    folder = Path(model_dir)
    if not folder.exists():
        raise FormatError(f"{folder}: model folder not found")
    if not folder.is_dir():
        raise FormatError(f"{folder}: not a folder (expected an hce-train MODEL_DIR or a Hugging Face model folder)")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FormatError(
            f"{folder}: no config.json; expected an hce-train MODEL_DIR or a Hugging Face model folder"
        )
    config = _read_json(cfg_path)
    if not any((folder / n).is_file()
               for n in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")):
        raise FormatError(f"{folder}: no model weights (model.safetensors)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise FormatError(f"{folder}: no tokenizer (tokenizer.json) next to the weights")
    has_card = (folder / CARD_NAME).is_file()
    card = ModelCard.load(folder) if has_card else derive_card(folder, config)
    hidden = config.get("hidden_size")
    if isinstance(hidden, int) and hidden != card.dim:
        raise FormatError(f"{folder}: card says dim {card.dim} but config.json has hidden_size {hidden}")
    limit = _position_limit(config, folder)
    if limit is not None and card.max_length > limit:
        raise FormatError(f"{folder}: card max_length {card.max_length} exceeds the model's {limit} positions")
    present = [(folder / n).is_file() for n in TREE_FILES]
    if any(present) and not all(present):
        raise FormatError(f"{folder}: has only one of {TREE_FILES}; both or neither")
    log.info("source %s: dim %d, pooling %s, card %s", folder, card.dim, card.pooling,
             "read" if has_card else "derived")
    return Source(folder, card, has_card, all(present), config)
