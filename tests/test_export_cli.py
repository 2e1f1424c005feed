"""``hce-export onnx`` exit codes and output: 0 ok, 1 fixable error (one line), 2 bad usage."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("optimum.exporters.onnx")

from hce_export.cli import main  # noqa: E402
from hce_serve.formats.card import ModelCard  # noqa: E402


def run(*args):
    return CliRunner().invoke(main, ["onnx", *map(str, args)])


def test_success_prints_summary_json(tiny_bert, tmp_path):
    res = run("--model", tiny_bert, "--out", tmp_path / "e", "--quantize", "--isa", "avx2", "-q")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["files"] == {"fp32": "model.onnx", "int8": "model_int8.onnx"}
    assert summary["validation"]["degraded"] is False
    assert ModelCard.load(tmp_path / "e").onnx["quantization"]["isa"] == "avx2"


def test_fixable_errors_exit_1_with_one_line(tiny_bert, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    existing = tmp_path / "existing"
    existing.mkdir()
    cases = [
        (["--model", tmp_path / "missing", "--out", tmp_path / "o"], "not found"),
        (["--model", foreign, "--out", tmp_path / "o"], "config.json"),
        (["--model", tiny_bert, "--out", existing], "--overwrite"),
        (["--model", tiny_bert, "--out", tmp_path / "o", "--validate-data", tmp_path / "nodata"], "not found"),
    ]
    for args, needle in cases:
        res = run(*args, "-q")
        assert res.exit_code == 1, (args, res.output)
        assert res.stderr.startswith("Error: ") and needle in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_out_of_tolerance_exit_1_and_allow_degraded_exit_0(tiny_bert, tmp_path):
    strict = ["--model", tiny_bert, "--out", tmp_path / "s", "--max-fp32-diff", "0", "-q"]
    res = run(*strict)
    assert res.exit_code == 1 and "out of tolerance" in res.stderr and "--allow-degraded" in res.stderr
    assert not (tmp_path / "s").exists()
    res = run(*strict, "--allow-degraded")
    assert res.exit_code == 0, res.output
    val = ModelCard.load(tmp_path / "s").onnx["validation"]
    assert val["degraded"] is True and "fp32 vs torch" in val["failures"][0]


def test_bad_usage_exit_2(tiny_bert, tmp_path):
    assert run("--model", tiny_bert).exit_code == 2  # no --out
    assert run("--model", tiny_bert, "--out", tmp_path / "o", "--quantize", "--isa", "sse2").exit_code == 2
    assert run("--model", tiny_bert, "--out", tmp_path / "o", "--isa", "avx2").exit_code == 2  # needs --quantize
    assert run("--model", tiny_bert, "--out", tmp_path / "o", "--max-length", "0").exit_code == 2
    assert CliRunner().invoke(main, ["nosuchcommand"]).exit_code == 2
    assert not (tmp_path / "o").exists()


def test_fp32_ffn_layers_flag_is_recorded_in_the_card(tiny_bert, tmp_path):
    res = run("--model", tiny_bert, "--out", tmp_path / "e", "--quantize", "--isa", "avx2", "--fp32-ffn-layers", "0",
              "-q")
    assert res.exit_code == 0, res.output
    quant = ModelCard.load(tmp_path / "e").onnx["quantization"]
    assert quant["fp32_layers"] == [0] and quant["keep_ffn_out"] is True
    assert len(quant["excluded_nodes"]) == 1 and "layer.0/output/dense" in quant["excluded_nodes"][0]


def test_ffn_out_default_follows_the_isa_and_the_flags_override_it(tiny_bert, tmp_path):
    def excluded(*flags: str) -> int:
        out = tmp_path / "-".join(flags).replace("-", "")
        res = run("--model", tiny_bert, "--out", out, "--quantize", *flags, "-q")
        assert res.exit_code == 0, res.output
        return len(ModelCard.load(out).onnx["quantization"]["excluded_nodes"])

    assert excluded("--isa", "avx2") == 2 and excluded("--isa", "avx512-vnni") == 0  # the 2-layer tiny model
    assert excluded("--isa", "avx512-vnni", "--keep-ffn-out") == 2
    assert excluded("--isa", "avx2", "--quantize-ffn-out") == 0
    assert excluded("--isa", "avx512-vnni", "--fp32-ffn-layers", "0") == 1  # layers asked for: kept there
    res = run("--model", tiny_bert, "--out", tmp_path / "x", "--keep-ffn-out")
    assert res.exit_code == 2 and "--quantize" in res.stderr


def test_fp32_ffn_layers_usage_errors_exit_2_with_one_error_line(tiny_bert, tmp_path):
    out = ["--model", tiny_bert, "--out", tmp_path / "o"]
    cases = [
        ([*out, "--quantize", "--quantize-ffn-out", "--fp32-ffn-layers", "0,1"], "--quantize-ffn-out"),
        ([*out, "--quantize", "--fp32-ffn-layers", "0,a"], "layer numbers"),
        ([*out, "--quantize", "--fp32-ffn-layers", "-1"], "layer numbers"),
        ([*out, "--fp32-ffn-layers", "0"], "--quantize"),
    ]
    for args, needle in cases:
        res = run(*args)
        assert res.exit_code == 2, (args, res.output)
        errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in res.stderr, res.stderr
    assert "--fp32-ffn-layers" in CliRunner().invoke(main, ["onnx", "--help"]).output
    assert not (tmp_path / "o").exists()
