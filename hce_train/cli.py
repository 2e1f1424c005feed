"""``hce-train fit|eval`` (DESIGN §5). Thin: parse, build the config, call the library, print JSON.

Every option defaults to "not given" so that the precedence defaults -> --config JSON -> flags holds.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from hce_serve.cli.common import HCEGroup, setup_logging, verbosity_options
from hce_serve.defaults import DOC_MAX_LENGTH, QUERY_MAX_LENGTH
from hce_serve.errors import ConfigError

from .config import (
    BATCHINGS,
    DEVICES,
    MODES,
    NEGATIVE_ENCODINGS,
    NEGATIVES,
    PRECISIONS,
    PSEUDO_POSITIVES,
    PSEUDO_QUERIES,
    REBUILD_EPOCH,
    REBUILD_HALF_EPOCH,
    SIBLING_SELECTS,
    DistillConfig,
    load_config_file,
    make_config,
    parse_negative_filter,
)

log = logging.getLogger(__name__)
_DISTILL = DistillConfig()  # distill-query's defaults, shown in its --help


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, found {value!r}") from None


def _rebuild(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    if value == "epoch":
        return REBUILD_EPOCH
    if value == "half-epoch":
        return REBUILD_HALF_EPOCH
    try:
        steps = int(value)
    except ValueError:
        steps = -1
    if steps < 0:
        raise click.BadParameter(f"expected 'epoch', 'half-epoch' or a step count (0 = never), found {value!r}")
    return steps


def _negative_filter(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_negative_filter(value)
    except ConfigError as e:
        raise click.BadParameter(str(e).removeprefix("config: ")) from None
    return value


@click.group(cls=HCEGroup)
def main() -> None:
    """Train and evaluate HCE encoders (an encoder co-trained with a corpus tree)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="BEIR folder.")
@click.option("--split", default=None, help="qrels split to train on (supervised) [train].")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="MODEL_DIR to write.")
@click.option("--base-model", default=None, help="HF name or path [all-MiniLM-L6-v2].")
@click.option("--mode", type=click.Choice(MODES), default=None, help="supervised (qrels) or unsupervised (spans).")
@click.option("--negatives", type=click.Choice(NEGATIVES), default=None, help="hce siblings, flat random, mined.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="JSON of config fields.")
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Global batch [64].")
@click.option("--lr", type=float, default=None, help="Peak learning rate [5e-5 sup / 1e-5 unsup].")
@click.option("--device", type=click.Choice(DEVICES), default=None)
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="bf16 autocast; auto = on CUDA and on CPUs with native bf16 (AMX/AVX512-BF16) [auto].")
@click.option("--attention-dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Attention dropout while training [the base model's]; 0 is ~2x faster on CPUs.")
@click.option("--seed", type=int, default=None)
@click.option("--overwrite", is_flag=True, help="Replace a model already in --out.")
@click.option("--resume", is_flag=True, help="Continue from --out/checkpoint.")
@click.option("--branching", type=click.IntRange(min=2), default=None, help="Most children per tree node [32].")
@click.option("--leaf-size", type=click.IntRange(min=1), default=None, help="Most documents per leaf [16].")
@click.option("--siblings", "negatives_per_query", type=click.IntRange(min=0), default=None,
              help="S negatives per query [7].")
@click.option("--temperature", "tau", type=float, default=None, help="Softmax temperature [0.05].")
@click.option("--level-taus", callback=_floats, default=None, help="Per centroid level temperatures, top first.")
@click.option("--level-weights", callback=_floats, default=None, help="Centroid level weights, top first [0.5].")
@click.option("--doc-weight", type=float, default=None, help="Weight of the sibling-document level [1].")
@click.option("--inbatch-weight", type=float, default=None, help="Lambda of in-batch InfoNCE [1].")
@click.option("--negative-encoding", type=click.Choice(NEGATIVE_ENCODINGS), default=None,
              help="live: negatives encoded with gradient each step; cached: from the latest corpus encode [live].")
@click.option("--refresh-mined/--static-mined", "refresh_mined", default=None,
              help="mined: re-mine from the current encoder on the rebuild schedule [static].")
@click.option("--sibling-guard", type=click.IntRange(min=0), default=None,
              help="Skip the query's top-G documents as negatives in every arm [0: off]; = --negative-filter rank:G.")
@click.option("--negative-filter", callback=_negative_filter, default=None, metavar="none|rank:G|percpos:R",
              help="False-negative filter of the hard negatives: none, the query's top G skipped, or (TopK-PercPos) "
                   "any negative scoring above R x the positive dropped, under the encoder that picked it [none].")
@click.option("--batching", type=click.Choice(BATCHINGS), default=None,
              help="random, or tree-topic: each batch from one or two top-level tree nodes [random].")
@click.option("--sibling-select", type=click.Choice(SIBLING_SELECTS), default=None,
              help="hce: leaf-mates of the positive, or the query's top documents under the positive's parent [leaf].")
@click.option("--query-sibling-pool", type=click.IntRange(min=1), default=None,
              help="--sibling-select query: draw from the query's top P under the parent [20].")
@click.option("--sibling-share", type=click.FloatRange(0, 1), default=None,
              help="hce: share of S from siblings, the rest mined (0.5 = half and half) [1].")
@click.option("--level-anneal-epochs", type=click.FloatRange(0), default=None,
              help="Centroid level weights fall linearly to 0 over this many epochs [0: constant].")
@click.option("--pseudo-positive", type=click.Choice(PSEUDO_POSITIVES), default=None,
              help="Unsupervised positive: the whole document, or a second independent crop (Contriever) [document].")
@click.option("--pseudo-queries", type=click.Choice(PSEUDO_QUERIES), default=None,
              help="Unsupervised queries: verbatim spans or crops with dropped words [span].")
@click.option("--rebuild-every", callback=_rebuild, default=None,
              help="'epoch' [default], 'half-epoch', N steps, or 0 (never).")
@click.option("--query-max-length", type=click.IntRange(min=1), default=None,
              help=f"Query tokens [{QUERY_MAX_LENGTH}].")
@click.option("--doc-max-length", type=click.IntRange(min=1), default=None, help=f"Document tokens [{DOC_MAX_LENGTH}].")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=None, help="Also checkpoint every N steps.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@verbosity_options
def fit(config_file: Path | None, overwrite: bool, resume: bool, no_progress: bool, verbose: int, quiet: bool,
        **flags: Any) -> None:
    """Train an encoder (and its corpus tree) and write MODEL_DIR."""
    setup_logging(verbose, quiet)
    from .loop import fit as run_fit  # torch/transformers import only when a command needs them

    values = load_config_file(config_file) if config_file else {}
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()}
    cfg = make_config(values, flags)
    summary = run_fit(cfg, overwrite=overwrite, resume=resume, progress=not no_progress and not quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(summary, sort_keys=True))


@main.command("distill-query")
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="MODEL_DIR (the full encoder: teacher, and the document encoder at serving time), or any "
                   "encoder folder hce-export accepts (an untrained base model: see --out).")
@click.option("--layers", required=True, type=click.IntRange(min=1), help="Transformer layers the query encoder keeps.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="QMODEL_DIR to write. With a plain encoder folder as --model (no hce_model.json, nothing is "
                   "written there): the pair's MODEL_DIR, a copy of the teacher with its card and the query "
                   "encoder in query_encoder/; hce-export onnx --model OUT exports both.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="BEIR folder to distil on [the one MODEL_DIR was trained on].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help=f"[{_DISTILL.epochs}]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help=f"[{_DISTILL.batch_size}]")
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help=f"Peak learning rate [{_DISTILL.lr}].")
@click.option("--pseudo-per-doc", type=click.IntRange(min=0), default=None,
              help="Pseudo-queries cropped from each document per epoch [0: enough to fill --max-pseudo, 8 to 16].")
@click.option("--max-pseudo", type=click.IntRange(min=1), default=None,
              help=f"Pseudo-queries per epoch, at most [{_DISTILL.max_pseudo}].")
@click.option("--train-query-repeats", type=click.IntRange(min=1), default=None,
              help="Each train-split query this many times per epoch: its weight against the corpus crops "
                   f"[{_DISTILL.train_query_repeats}].")
@click.option("--pseudo-words", type=click.IntRange(min=1), nargs=2, default=None, metavar="MIN MAX",
              help="Words per pseudo-query crop; make MAX query-sized when queries are long "
                   f"[{' '.join(map(str, _DISTILL.pseudo_words))}].")
@click.option("--init-layers", default=None, metavar="bottom|ends|top|I,J,..",
              help="Teacher layers the student starts from: the first L, layer 0 and the top L-1, the top L, "
                   f"or a list [{_DISTILL.init_layers}].")
@click.option("--length-grouped/--no-length-grouped", default=None,
              help="Batch queries of similar length together (pads less; long queries train faster) "
                   f"[{'on' if _DISTILL.length_grouped else 'off'}].")
@click.option("--tau", type=click.FloatRange(0, min_open=True), default=None,
              help=f"Temperature of the listwise term [{_DISTILL.tau}].")
@click.option("--cos-weight", type=click.FloatRange(0), default=None,
              help=f"Weight of the cosine-to-teacher term [{_DISTILL.cos_weight}].")
@click.option("--kl-weight", type=click.FloatRange(0), default=None,
              help=f"Weight of the listwise KL term over the teacher's top documents [{_DISTILL.kl_weight}].")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing QMODEL_DIR.")
@click.option("--no-progress", is_flag=True)
@verbosity_options
def distill_query(model: Path, layers: int, out: Path, data: Path | None, epochs: int | None,
                  batch_size: int | None, lr: float | None, pseudo_per_doc: int | None, max_pseudo: int | None,
                  train_query_repeats: int | None, pseudo_words: tuple[int, int] | None, init_layers: str | None,
                  length_grouped: bool | None,
                  tau: float | None, cos_weight: float | None, kl_weight: float | None, device: str, precision: str,
                  seed: int, overwrite: bool, no_progress: bool, verbose: int, quiet: bool) -> None:
    """Distil a shallow query encoder (L of MODEL_DIR's layers) that maps queries where MODEL_DIR does.

    MODEL_DIR's card records the pair. A plain encoder folder (an untrained base model) is never written:
    --out then becomes the pair's MODEL_DIR, ready for hce-export.
    """
    setup_logging(verbose, quiet)
    from .distill import distill

    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "pseudo_per_doc": pseudo_per_doc,
             "max_pseudo": max_pseudo, "train_query_repeats": train_query_repeats,
             "pseudo_words": tuple(pseudo_words) if pseudo_words else None,
             "init_layers": init_layers, "length_grouped": length_grouped, "tau": tau, "cos_weight": cos_weight,
             "kl_weight": kl_weight}
    cfg = DistillConfig(layers=layers, seed=seed, precision=precision, device=device,
                        **{k: v for k, v in given.items() if v is not None})
    summary = distill(model, out, cfg, data=data, overwrite=overwrite, progress=not no_progress and not quiet)
    click.echo(json.dumps(summary, sort_keys=True))


@main.command("eval")
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="MODEL_DIR.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="BEIR folder.")
@click.option("--split", default="test", show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--query-max-length", type=click.IntRange(min=1), default=None, help="Override the card's.")
@click.option("--doc-max-length", type=click.IntRange(min=1), default=None, help="Override the card's.")
@click.option("--no-progress", is_flag=True)
@verbosity_options
def eval_cmd(model: Path, data: Path, split: str, device: str, batch_size: int, query_max_length: int | None,
             doc_max_length: int | None, no_progress: bool, verbose: int, quiet: bool) -> None:
    """Exact-search evaluation of a MODEL_DIR: prints nDCG@10, Recall@10/100, MRR@10 as JSON."""
    setup_logging(verbose, quiet)
    from .evaluate import evaluate_model_dir
    from .loop import pick_device

    metrics = evaluate_model_dir(model, data, split, pick_device(device), batch_size, query_max_length,
                                 doc_max_length, progress=not no_progress and not quiet)
    click.echo(json.dumps(metrics, sort_keys=True))
    sys.stdout.flush()
