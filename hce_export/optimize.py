"""Graph fusion with onnxruntime's transformers optimizer: Attention, (Skip)LayerNorm, BiasGelu, EmbedLayerNorm.

Only the optimizer's Python fusions run here (``opt_level=0``): they produce contrib ops that both the CPU
and the CUDA providers implement, so the fused fp32 graph is also the base of the fp16 variant.
onnxruntime applies its own provider-specific rewrites when a session loads the graph.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hce_serve.errors import missing_dependency

from .tool_messages import tool_output

log = logging.getLogger(__name__)

# config.model_type -> the optimizer's model family (all BERT-shaped encoders fuse with "bert").
MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert",
               "mpnet": "bert", "electra": "bert", "camembert": "bert", "deberta-v2": "bert"}


def fuse(src: Path, dst: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Write the fused graph of ``src`` to ``dst``; returns the fused-operator counts for the card."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:
        raise missing_dependency("onnxruntime", "export") from None
    family = MODEL_TYPES.get(str(config.get("model_type")), "bert")
    heads = int(config.get("num_attention_heads") or config.get("n_heads") or 0)
    hidden = int(config.get("hidden_size") or config.get("dim") or 0)
    # The optimizer print()s and logs a shape-inference failure that is harmless here (tool_messages); stdout
    # belongs to the CLI's JSON result.
    with tool_output():
        opt = optimize_model(str(src), model_type=family, num_heads=heads, hidden_size=hidden, opt_level=0)
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(dst), use_external_data_format=False)
    log.info("fused graph %s: %s", dst.name, stats)
    return {"tool": "onnxruntime.transformers.optimizer", "model_type": family, "fused": stats}


def to_fp16(src: Path, dst: Path, config: dict[str, Any]) -> dict[str, Any]:
    """An fp16 variant for GPU serving; inputs/outputs stay int64/float32 so callers need no change."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:
        raise missing_dependency("onnxruntime", "export") from None
    family = MODEL_TYPES.get(str(config.get("model_type")), "bert")
    with tool_output():
        opt = optimize_model(str(src), model_type=family, opt_level=0)
    # keep_io_types: the graph still takes/returns float32 where it has float tensors at its edges.
    opt.convert_float_to_float16(keep_io_types=True)
    opt.save_model_to_file(str(dst), use_external_data_format=False)
    return {"tool": "onnxruntime.transformers float16", "keep_io_types": True}
