"""What this CPU can do, read once from /proc/cpuinfo: the one place the packages and benchmarks ask.

Training asks whether bf16 is native (autocast is slower than fp32 where it is emulated), export asks
which int8 kernels onnxruntime will use, and every benchmark stamps the model name and instruction sets
beside its timings, since sessions land on different CPUs. Torch-free, so serving can use it too.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BF16 = ("amx_bf16", "avx512_bf16")  # native bf16 arithmetic
TIMING_ISAS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16")


def _field(name: str) -> str | None:
    try:
        for line in CPUINFO.read_text(encoding="utf-8").splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent, e.g. macOS)."""
    return frozenset((_field("flags") or "").split())


@functools.lru_cache(maxsize=1)
def model() -> str:
    return _field("model name") or platform.processor() or platform.machine()


def is_arm() -> bool:
    return platform.machine().lower() in ("arm64", "aarch64")


def bf16_flags() -> list[str]:
    """The native bf16 instruction sets this CPU has (``amx_bf16``, ``avx512_bf16``), if any."""
    have = flags()
    return [f for f in BF16 if f in have]


def int8_isa() -> str:
    """The int8 kernels onnxruntime will run here: ``arm64``, ``avx512-vnni`` (VNNI or AMX), or ``avx2``."""
    if is_arm():
        return "arm64"
    return "avx512-vnni" if flags() & {"avx512_vnni", "avx_vnni", "amx_int8"} else "avx2"


def timing_isas() -> list[str]:
    """The instruction sets that decide a timing, recorded beside it."""
    have = flags()
    return [f for f in TIMING_ISAS if f in have]
