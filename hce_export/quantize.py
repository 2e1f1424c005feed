"""Dynamic int8 for CPU with onnxruntime's quantizer, tuned for retrieval quality.

Weights are quantised per output channel (per-tensor int8 of MiniLM costs too much cosine), activations
dynamically per batch. The instruction set decides the weight range: without VNNI, x86 multiplies
u8 x s8 with ``vpmaddubsw`` whose int16 sums saturate, so full 8-bit weights lose accuracy and
``reduce_range`` (7-bit weights) is the fix; with AVX-512/AVX VNNI or on ARM64 the full range is exact.

Some matmuls are far more sensitive than others. Measured on MiniLM-L6 (AVX2, 7-bit per-channel weights,
cosine to fp32 over 220 SciFact queries/documents): all int8 .9934 mean / .9893 min; attention kept fp32
.9946/.9905; FFN input projection kept fp32 .9952/.9924; the FFN *output* projection (the matmul fed by
GELU, whose skewed activations quantise badly with a per-batch uint8 range) kept fp32 .9968/.9940. So by
default that projection stays fp32 (``keep_ffn_out``), found by graph structure (consumer of a Gelu op)
rather than by name so it works for any BERT-like encoder. ``exclude`` adds nodes by name substring.

Full-corpus retrieval (benchmarks/int8_study.py; the AVX2 run, in results/int8-study.json's history) confirms
the choice: nDCG@10 loss vs fp32 on SciFact / ArguAna is 0.06 / -0.20 points with the FFN output
projections kept fp32 and -0.53 / 0.29 with every matmul int8 (cosine min .987 vs .994 on the corpus,
top-10 overlap with fp32 .89-.93 vs .92-.95). The price is speed: about 1.2x the all-int8 query latency
at 1 thread (interleaved A/B on the AVX2 CPU), so ``--quantize-ffn-out`` offers the faster graph.
On an AVX-512 VNNI CPU (the file's current run, SciFact / CISI) the losses were 0.18 / 0.50 points (kept
fp32) and 0.26 / 0.11 (all int8), with all-int8 1.44x faster: there all-int8 is the better trade (smaller
mean loss, much faster), so the default is per instruction set (``FFN_OUT_FP32``): kept fp32 on AVX2 and
ARM64 (not measured there, so the conservative recipe), quantised on AVX-512 VNNI. ``--keep-ffn-out`` /
``--quantize-ffn-out`` override it. The sensitivity sits in the early layers: keeping only layers 0-2 fp32
recovers most of the cosine, so ``fp32_layers`` (``hce-export onnx --fp32-ffn-layers 0,1,2``) keeps the
GELU-fed projections fp32 in those encoder layers only and quantises the rest (None, the default, keeps them fp32 in
every layer). A node's layer is read from the graph's names (``/encoder/layer.3/output/dense/MatMul``:
``layer.N``, ``layer_N``, ``layers.N`` in the node name, else in its output or activation input names); one whose
layer cannot be told stays fp32, with a warning.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hce_serve import cpu
from hce_serve.errors import ConfigError, missing_dependency

from .tool_messages import tool_output

log = logging.getLogger(__name__)

ISAS = ("avx512-vnni", "avx2", "arm64")
# Default of ``keep_ffn_out`` per instruction set, from benchmarks/results/int8-study.json (module docstring).
FFN_OUT_FP32 = {"avx2": True, "arm64": True, "avx512-vnni": False}


def detect_isa() -> str:
    """The int8 instruction set of this machine, from the CPU flags onnxruntime's kernels will use."""
    return cpu.int8_isa()


@dataclass(frozen=True)
class QuantSettings:
    """Every knob of the int8 variant; stored in the export card as written."""

    isa: str
    per_channel: bool = True
    reduce_range: bool = False
    weight_type: str = "qint8"
    op_types: tuple[str, ...] = ("MatMul", "Attention", "Gemm")
    exclude: tuple[str, ...] = field(default_factory=tuple)
    keep_ffn_out: bool = True  # FFN output projections (fed by GELU) stay fp32; see the module docstring
    method: str = "dynamic"
    fp32_layers: tuple[int, ...] | None = None  # with keep_ffn_out: only these layers' projections (None: all)

    def __post_init__(self) -> None:
        if self.isa not in ISAS:
            raise ConfigError(f"isa must be one of {ISAS}, found {self.isa!r}")
        if self.weight_type not in ("qint8", "quint8"):
            raise ConfigError(f"weight_type must be qint8 or quint8, found {self.weight_type!r}")
        if self.fp32_layers is not None:
            layers = self.fp32_layers
            if isinstance(layers, (str, bytes)) or not isinstance(layers, (tuple, list)) or not layers or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
                raise ConfigError(f"fp32_layers must be a non-empty list of layer numbers >= 0 (or None for every "
                                  f"layer), found {layers!r}")
            if not self.keep_ffn_out:
                raise ConfigError("fp32_layers keeps FFN output projections fp32 in some layers; it contradicts "
                                  "keep_ffn_out=False (every projection quantised)")
            object.__setattr__(self, "fp32_layers", tuple(sorted(set(layers))))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        d["exclude"] = list(self.exclude)
        d["fp32_layers"] = None if self.fp32_layers is None else list(self.fp32_layers)
        return d


def settings_for(isa: str | None = None, exclude: tuple[str, ...] = (),
                 keep_ffn_out: bool | None = None) -> QuantSettings:
    """Default settings for an instruction set (detected when None); ``keep_ffn_out`` None: that ISA's default."""
    isa = isa or detect_isa()
    if isa not in ISAS:
        raise ConfigError(f"--isa must be one of {', '.join(ISAS)}, found {isa!r}")
    keep = FFN_OUT_FP32[isa] if keep_ffn_out is None else keep_ffn_out
    # Without VNNI, 7-bit weights avoid the u8 x s8 int16 saturation (see the module docstring).
    return QuantSettings(isa=isa, reduce_range=(isa == "avx2"), exclude=tuple(exclude), keep_ffn_out=keep)


GELUS = ("Gelu", "BiasGelu", "FastGelu", "QuickGelu")
# "layer.3", "layer_3", "layers.3" as a whole path component of an HF export's names (not "sublayer.3").
_LAYER = re.compile(r"(?:^|[/.:_])layers?[._](\d+)(?=$|[/.:_])")


def layer_of(*names: str) -> int | None:
    """The encoder layer named by the first of ``names`` that names one, or None."""
    for name in names:
        m = _LAYER.search(name)
        if m:
            return int(m.group(1))
    return None


def node_names(model_path: Path, op_types: tuple[str, ...]) -> tuple[list[str], dict[str, int | None]]:
    """Names of the quantisable nodes in graph order, and {name: encoder layer or None} of those of them
    that are FFN output projections. The layer comes from the node's name, else its outputs', else its
    activation input's (never a weight's: exporters share one initializer between layers with equal weights)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    gelu_out = {o for n in model.graph.node if n.op_type in GELUS for o in n.output}
    names = [n.name for n in model.graph.node if n.op_type in op_types]
    ffn_out = {n.name: layer_of(n.name, *n.output, n.input[0]) for n in model.graph.node
               if n.op_type in op_types and n.input and n.input[0] in gelu_out}
    return names, ffn_out


def kept_fp32(ffn_out: dict[str, int | None], settings: QuantSettings) -> set[str]:
    """The FFN output projections ``settings`` keeps fp32 (one whose layer is unknown is kept, with a warning)."""
    if not settings.keep_ffn_out:
        return set()
    if settings.fp32_layers is None:
        return set(ffn_out)
    unknown = [n for n, layer in ffn_out.items() if layer is None]
    if unknown:
        log.warning("fp32_layers: no layer number in the names of %s; kept fp32", ", ".join(unknown))
    absent = sorted(set(settings.fp32_layers) - set(ffn_out.values()))
    if absent:
        log.warning("fp32_layers: no GELU-fed matmul found in layer(s) %s", ", ".join(map(str, absent)))
    return {n for n, layer in ffn_out.items() if layer is None or layer in settings.fp32_layers}


def quantize(src: Path, dst: Path, settings: QuantSettings) -> dict[str, Any]:
    """Write the int8 graph of ``src`` to ``dst``; returns what the card records."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise missing_dependency("onnxruntime", "export") from None
    names, ffn_out = node_names(src, settings.op_types)
    if settings.keep_ffn_out and not ffn_out:
        log.warning("no GELU-fed matmul found in %s: every matmul is quantised", src.name)
    keep = kept_fp32(ffn_out, settings)
    excluded = [n for n in names if n in keep or any(pat in n for pat in settings.exclude)]
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs one INFO line per tensor on the root logger
    try:
        with tool_output():  # it also advises a pre-processing this graph does not need (tool_messages)
            quantize_dynamic(
                str(src),
                str(dst),
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                weight_type=QuantType.QInt8 if settings.weight_type == "qint8" else QuantType.QUInt8,
                op_types_to_quantize=list(settings.op_types),
                nodes_to_exclude=excluded,
                extra_options={
                    "MatMulConstBOnly": True,  # only weight matmuls; activation x activation stays fp32
                    # ONNX shape inference cannot type the fused contrib ops' outputs; they are all float.
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                },
            )
    finally:
        root.setLevel(level)
    log.info("int8 graph %s: %d quantisable nodes, %d kept fp32", dst.name, len(names), len(excluded))
    # The recipe's ``isa`` may be forced (--isa); the machine that wrote the graph is recorded as it is.
    return {**settings.as_dict(), "excluded_nodes": excluded, "quantizable_nodes": len(names),
            "exported_on": {"cpu": cpu.model(), "instruction_sets": cpu.timing_isas()}}
