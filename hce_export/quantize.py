"""Dynamic int8 for CPU with onnxruntime's quantizer, tuned for retrieval quality.

Weights are quantised per output channel (per-tensor int8 of MiniLM costs too much cosine), activations
dynamically per batch. The instruction set decides the weight range: without VNNI, x86 multiplies
u8 x s8 with ``vpmaddubsw`` whose int16 sums saturate, so full 8-bit weights lose accuracy and
``reduce_range`` (7-bit weights) is the fix; with AVX-512/AVX VNNI or on ARM64 the full range is exact.
Nodes named in ``exclude`` (matched by substring) stay fp32: the caller picks the sensitive ones.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hce_serve.errors import ConfigError, missing_dependency

log = logging.getLogger(__name__)

ISAS = ("avx512-vnni", "avx2", "arm64")


def detect_isa() -> str:
    """The int8 instruction set of this machine, from the CPU flags onnxruntime's kernels will use."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags:
        return "avx512-vnni"
    return "avx2"


@dataclass(frozen=True)
class QuantSettings:
    """Every knob of the int8 variant; stored in the export card as written."""

    isa: str
    per_channel: bool = True
    reduce_range: bool = False
    weight_type: str = "qint8"
    op_types: tuple[str, ...] = ("MatMul", "Attention", "Gemm")
    exclude: tuple[str, ...] = field(default_factory=tuple)
    method: str = "dynamic"

    def __post_init__(self) -> None:
        if self.isa not in ISAS:
            raise ConfigError(f"isa must be one of {ISAS}, found {self.isa!r}")
        if self.weight_type not in ("qint8", "quint8"):
            raise ConfigError(f"weight_type must be qint8 or quint8, found {self.weight_type!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        d["exclude"] = list(self.exclude)
        return d


def settings_for(isa: str | None = None, exclude: tuple[str, ...] = ()) -> QuantSettings:
    """Default settings for an instruction set (detected when None)."""
    isa = isa or detect_isa()
    if isa not in ISAS:
        raise ConfigError(f"--isa must be one of {', '.join(ISAS)}, found {isa!r}")
    # Without VNNI, 7-bit weights avoid the u8 x s8 int16 saturation (see the module docstring).
    return QuantSettings(isa=isa, reduce_range=(isa == "avx2"), exclude=tuple(exclude))


def node_names(model_path: Path, op_types: tuple[str, ...]) -> list[str]:
    """Names of the quantisable nodes, in graph order."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in op_types]


def quantize(src: Path, dst: Path, settings: QuantSettings) -> dict[str, Any]:
    """Write the int8 graph of ``src`` to ``dst``; returns what the card records."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise missing_dependency("onnxruntime", "export") from None
    names = node_names(src, settings.op_types)
    excluded = [n for n in names if any(pat in n for pat in settings.exclude)]
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
    log.info("int8 graph %s: %d quantisable nodes, %d kept fp32", dst.name, len(names), len(excluded))
    return {**settings.as_dict(), "excluded_nodes": excluded, "quantizable_nodes": len(names)}
