"""``hce-export``: command line over ``hce_export.api.export``.

Exit codes: 0 success, 1 an error the user can fix (missing/foreign model folder, existing output without
``--overwrite``, export out of tolerance, missing optimum), 2 bad usage. The export summary (files and
validation numbers) goes to stdout as JSON; logs to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from hce_serve.cli.common import _STATE, HCEGroup, setup_logging, verbosity_options

from .quantize import ISAS
from .validate import Tolerances

_DEFAULT = Tolerances()


def _layers(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """``0,1,2`` -> (0, 1, 2); anything but comma-separated layer numbers >= 0 is a usage error."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise click.BadParameter(f"expected comma-separated layer numbers >= 0 such as 0,1,2, found {value!r}")
    return tuple(sorted({int(p) for p in parts}))


@click.group(cls=HCEGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Export HCE / Hugging Face encoders to ONNX for serving."""


@main.command("onnx")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="MODEL_DIR from hce-train fit, or a plain Hugging Face encoder folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="EXPORT_DIR to write.")
@click.option("--quantize", is_flag=True, help="Also write the dynamic int8 CPU graph model_int8.onnx.")
@click.option("--fp16", is_flag=True, help="Also write the fp16 GPU graph model_fp16.onnx.")
@click.option("--isa", type=click.Choice(ISAS), default=None,
              help="int8 instruction set (default: detected from this machine's CPU).")
@click.option("--exclude-node", "exclude", multiple=True,
              help="Keep int8-sensitive nodes whose name contains this text in fp32 (repeatable; replaces the "
                   "default).")
@click.option("--quantize-ffn-out/--keep-ffn-out", "quantize_ffn_out", default=None,
              help="Quantise the FFN output projections (faster, lower cosine to fp32) or keep them fp32. Default "
                   "per instruction set: quantised on AVX-512 VNNI (1.44x faster, no worse nDCG@10), kept on AVX2 "
                   "and ARM64; see benchmarks/RESULTS.md.")
@click.option("--fp32-ffn-layers", "fp32_layers", default=None, callback=_layers, metavar="0,1,2",
              help="Keep the FFN output projections fp32 only in these encoder layers (numbered from 0) and "
                   "quantise them in the others: between --keep-ffn-out (fp32 in every layer) and "
                   "--quantize-ffn-out, with which it cannot be combined.")
@click.option("--validate-data", type=click.Path(path_type=Path), default=None,
              help="BEIR folder: also compare nDCG@10 of fp32 and int8 by exact search.")
@click.option("--validate-split", default="test", show_default=True, help="qrels split for --validate-data.")
@click.option("--validate-max-queries", type=click.IntRange(min=1), default=None,
              help="Subsample the --validate-data queries (recorded in the card).")
@click.option("--validate-max-docs", type=click.IntRange(min=1), default=None,
              help="Subsample the --validate-data corpus, judged documents kept (recorded in the card).")
@click.option("--max-length", type=click.IntRange(min=1), default=None, help="Override the document max length.")
@click.option("--query-max-length", type=click.IntRange(min=1), default=None,
              help="Override the query max length (ArguAna's long queries need 256).")
@click.option("--opset", type=click.IntRange(min=14), default=None, help="ONNX opset (default: optimum's).")
@click.option("--max-fp32-diff", type=float, default=_DEFAULT.fp32_max_abs, show_default=True,
              help="Tolerance: ONNX fp32 vs torch max abs difference.")
@click.option("--min-int8-mean-cos", type=float, default=_DEFAULT.int8_mean_cos, show_default=True,
              help="Tolerance: int8 vs fp32 mean cosine.")
@click.option("--min-int8-cos", type=float, default=_DEFAULT.int8_min_cos, show_default=True,
              help="Tolerance: int8 vs fp32 minimum cosine.")
@click.option("--max-ndcg-loss", type=float, default=_DEFAULT.ndcg_max_loss, show_default=True,
              help="Tolerance: nDCG@10 fp32 minus int8 with --validate-data.")
@click.option("--allow-degraded", is_flag=True, help="Keep an export that is out of tolerance (marked degraded).")
@click.option("--overwrite", is_flag=True, help="Replace an existing EXPORT_DIR (swapped in only when complete).")
@verbosity_options
def onnx_cmd(model_dir: Path, out_dir: Path, quantize: bool, fp16: bool, isa: str | None, exclude: tuple[str, ...],
             quantize_ffn_out: bool | None, fp32_layers: tuple[int, ...] | None,
             validate_data: Path | None, validate_split: str, validate_max_queries: int | None,
             validate_max_docs: int | None, max_length: int | None, query_max_length: int | None,
             opset: int | None, max_fp32_diff: float, min_int8_mean_cos: float, min_int8_cos: float,
             max_ndcg_loss: float, allow_degraded: bool, overwrite: bool, verbose: int, quiet: bool) -> None:
    """Export MODEL_DIR to a self-contained, self-validated EXPORT_DIR."""
    setup_logging(verbose, quiet)
    # -v given anywhere on the line (setup_logging adds them up): onnxruntime's own messages shown as they are
    said = click.get_current_context().find_root().meta.get(_STATE, {})
    tool_messages = bool(said.get("verbose", verbose)) and not said.get("quiet", quiet)
    if (isa or exclude or quantize_ffn_out is not None or fp32_layers is not None) and not quantize:
        raise click.UsageError("--isa/--exclude-node/--quantize-ffn-out/--keep-ffn-out/--fp32-ffn-layers only apply "
                               "with --quantize")
    if quantize_ffn_out is True and fp32_layers is not None:
        raise click.UsageError("--fp32-ffn-layers and --quantize-ffn-out exclude each other: the first keeps some "
                               "FFN output projections fp32, the second quantises them all")
    from .api import export  # heavy imports (torch, optimum) only once the usage is known to be right

    result = export(
        model_dir, out_dir, quantize=quantize, fp16=fp16, overwrite=overwrite, validate_data=validate_data,
        allow_degraded=allow_degraded, isa=isa, exclude=tuple(exclude) or None,
        keep_ffn_out=None if quantize_ffn_out is None else not quantize_ffn_out,
        fp32_layers=fp32_layers, opset=opset,
        max_length=max_length, query_max_length=query_max_length,
        tolerances=Tolerances(max_fp32_diff, min_int8_mean_cos, min_int8_cos, max_ndcg_loss),
        validate_split=validate_split, validate_max_queries=validate_max_queries,
        validate_max_docs=validate_max_docs, tool_messages=tool_messages,
    )
    summary = {"path": result["path"], "files": result["files"], "validation": result["validation"]}
    click.echo(json.dumps(summary, indent=2, sort_keys=True))
    sys.stdout.flush()
