"""torch -> ONNX: one graph whose output is the pooled, L2-normalised ``sentence_embedding`` (batch, dim).

optimum's exporter config for the architecture (``feature-extraction`` task) decides the input names,
their dynamic axes, the opset and the model patches (attention-mask quirks of each transformers
version); ``torch.onnx.export`` then traces a small wrapper that adds pooling and normalisation on top of
the encoder, so serving needs no pooling code of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hce_serve.errors import FormatError, missing_dependency
from hce_serve.formats.card import ModelCard

log = logging.getLogger(__name__)

OUTPUT_NAME = "sentence_embedding"
ALLOWED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Exported:
    """What the fp32 export wrote: file, declared inputs and opset."""

    path: Path
    inputs: list[str]
    opset: int


def load_torch_model(model_dir: Path) -> Any:
    """The encoder in eval mode with eager attention (its graph is the one ORT's fusions recognise)."""
    try:
        from transformers import AutoModel
    except ImportError:
        raise missing_dependency("transformers", "export") from None
    try:
        model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    except (ValueError, KeyError, OSError) as e:
        detail = " ".join(str(e).split())[:200]
        raise FormatError(f"{model_dir}: transformers cannot load this model ({detail})") from None
    return model.eval()


def pooled_module(model: Any, card: ModelCard, inputs: list[str]) -> Any:
    """Wrap ``model`` so that forward(*inputs) returns the card's pooled (and normalised) embedding."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.input_names = list(inputs)

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            kw = dict(zip(inputs, args, strict=True))
            # optimum's patcher makes the model return a plain dict; ModelOutput indexes the same way.
            hidden = self.model(**kw)["last_hidden_state"]  # (B, L, H)
            mask = kw["attention_mask"]  # (B, L)
            if card.pooling == "cls":
                emb = hidden[:, 0]  # (B, H)
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
                emb = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)  # (B, H)
            if card.normalize:
                emb = torch.nn.functional.normalize(emb, p=2.0, dim=1)  # (B, H)
            return emb

    return Pooled().eval()


def exporter_config(model: Any) -> Any:
    """optimum's ONNX config for this architecture; an unsupported one is a one-line error."""
    try:
        import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs)
        from optimum.exporters.tasks import TasksManager
    except ImportError:
        raise missing_dependency("optimum-onnx", "export") from None
    try:
        ctor = TasksManager.get_exporter_config_constructor(
            exporter="onnx", model=model, task="feature-extraction", library_name="transformers"
        )
    except (ValueError, KeyError) as e:
        mtype = getattr(model.config, "model_type", "?")
        raise FormatError(
            f"unsupported architecture {mtype!r} for ONNX export ({' '.join(str(e).split())[:160]})"
        ) from None
    return ctor(model.config, task="feature-extraction")


def export_fp32(model: Any, card: ModelCard, out_path: Path, opset: int | None = None) -> Exported:
    """Trace the pooled encoder to ``out_path`` (a single .onnx file, weights inside)."""
    import torch

    cfg = exporter_config(model)
    inputs = [n for n in cfg.inputs if n in ALLOWED_INPUTS]
    if "input_ids" not in inputs or "attention_mask" not in inputs:
        raise FormatError(f"unsupported encoder inputs {list(cfg.inputs)}: need input_ids and attention_mask")
    opset = int(opset or cfg.DEFAULT_ONNX_OPSET)
    wrapper = pooled_module(model, card, inputs)
    # Dummy batch of 2 x 16 with some padding so the traced graph keeps the masked-mean path general.
    ids = torch.randint(1000 if model.config.vocab_size > 2000 else 5, min(model.config.vocab_size, 2000), (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    dummy = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    args = tuple(dummy[n] for n in inputs)
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in inputs}
    axes[OUTPUT_NAME] = {0: "batch_size"}
    with cfg.patch_model_for_export(model), torch.no_grad():
        torch.onnx.export(
            wrapper,
            args,
            str(out_path),
            input_names=inputs,
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, the graph ORT's fusions know
            external_data=False,
        )
    log.info("exported fp32 graph %s (inputs %s, opset %d)", out_path.name, inputs, opset)
    return Exported(out_path, inputs, opset)
