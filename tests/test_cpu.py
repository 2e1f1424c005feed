"""hce_serve.cpu reads /proc/cpuinfo once for training (bf16), export (int8 kernels) and benchmark stamps."""

from __future__ import annotations

from pathlib import Path

import pytest

from hce_serve import cpu

XEON = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8 amx_bf16 avx512_bf16\n")
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx2 fma\n"


@pytest.fixture
def cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def use(text: str | None) -> None:
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(cpu, "CPUINFO", path)
        monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
        cpu.flags.cache_clear()
        cpu.model.cache_clear()

    yield use
    cpu.flags.cache_clear()
    cpu.model.cache_clear()


def test_native_bf16_and_vnni_cpu(cpuinfo) -> None:
    cpuinfo(XEON)
    assert cpu.model() == "Intel(R) Xeon(R) Processor"
    assert cpu.bf16_flags() == ["amx_bf16", "avx512_bf16"]
    assert cpu.int8_isa() == "avx512-vnni"
    assert cpu.timing_isas() == ["avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16", "avx512_bf16"]


def test_avx2_only_cpu_keeps_fp32_and_avx2_kernels(cpuinfo) -> None:
    from hce_export.quantize import detect_isa
    from hce_train.model import use_bf16

    cpuinfo(EPYC)
    assert cpu.bf16_flags() == []
    assert not use_bf16("auto", "cpu")
    assert use_bf16("auto", "cuda")
    assert cpu.int8_isa() == detect_isa() == "avx2"
    assert cpu.timing_isas() == ["avx2"]


def test_missing_cpuinfo_means_no_flags(cpuinfo) -> None:
    cpuinfo(None)
    assert cpu.flags() == frozenset()
    assert cpu.bf16_flags() == []
    assert cpu.int8_isa() == "avx2"
    assert cpu.model()  # falls back to the platform's name
