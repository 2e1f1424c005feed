"""Options and helpers the ``hce-serve`` commands share (defaults come from ``defaults.py``).

``TARGET`` stands where ``--index`` stood on the commands that work on either backend (search, get, http,
index add/delete/stats): ``--index IDX_DIR``, or ``--milvus URI --collection NAME --model EXPORT_DIR``. The
options fold into the command's one ``index_dir`` argument (a ``Path`` or a ``MilvusSpec``), which
``open_engine`` opens as ``Engine.open`` or ``Engine.open_milvus``: the command itself is the same code for both.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .. import defaults
from ..errors import DataError
from ..milvus.layout import MilvusTarget
from ..options import EngineOptions

IDX = click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path),
                   help="Index folder (IDX_DIR).")
VARIANT = click.option("--variant", type=click.Choice(EngineOptions.VARIANTS), default=defaults.VARIANT,
                       show_default=True, help="Encoder graph (auto: int8 on CPU).")
QUERY_ENCODER = click.option(
    "--query-encoder", type=click.Choice(EngineOptions.QUERY_ENCODERS), default=defaults.QUERY_ENCODER,
    show_default=True,
    help="Graph that encodes queries: the export's distilled shallow one when it has one (auto), the document "
         "graph (full), or the shallow one or an error (shallow).")
QUERY_CACHE = click.option("--query-cache", type=click.IntRange(*EngineOptions.QUERY_CACHE),
                           default=defaults.QUERY_CACHE,
                           show_default=True,
                           help="Query embeddings kept in an LRU cache (0: off).")
THREADS = click.option("--threads", type=click.IntRange(*EngineOptions.THREADS), default=None,
                       help=f"onnxruntime intra-op threads ({EngineOptions.THREADS.lo}-{EngineOptions.THREADS.hi}).")
BATCH = click.option("--batch-size", type=click.IntRange(*EngineOptions.BATCH_SIZE), default=defaults.BATCH_SIZE,
                     show_default=True, help="Documents encoded and written per step.")
SKIP_EMPTY = click.option("--skip-empty", is_flag=True,
                          help="Leave out documents with empty title and text (default: index them, with a warning).")
EF = click.option("--ef", type=click.IntRange(*EngineOptions.EF), default=None,
                  help="Search breadth for these queries: the HNSW beam, or the IVF cells scanned [the index's own, "
                       "set at build].")
EXISTING = dict(exists=True, dir_okay=False, path_type=Path)
TOKEN = click.option("--milvus-token", "milvus_token", envvar="MILVUS_TOKEN", default=None,
                     help="Milvus server credentials, user:password or an API key (default: $MILVUS_TOKEN).")




class FilterParam(click.ParamType):
    """``--filter '{"field": value}'`` (a JSON object; a list value means any of)."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        from ..checks import check_filter

        try:
            obj = json.loads(value)
            check_filter(obj)
        except json.JSONDecodeError as e:
            self.fail(f"not valid JSON ({e.msg}): {value!r}", param, ctx)
        except DataError as e:
            self.fail(str(e), param, ctx)
        return obj


FILTER = click.option("--filter", "flt", type=FilterParam(), default=None,
                      help='Only documents whose metadata matches, e.g. \'{"lang": "en", "year": [2020, 2021]}\'.')
SUBTREE = click.option("--subtree", type=click.IntRange(min=0), default=None,
                       help="Only documents under this node of the corpus tree.")


def _fusions() -> tuple[str, ...]:
    from ..lexical.fusion import FUSIONS

    return FUSIONS


def search_mode_options(default_note: str) -> Any:
    """--mode, --fusion, --alpha, --depth: hybrid search's choices (None: ``default_note``)."""
    def wrap(f: Any) -> Any:
        for opt in reversed((
            click.option("--mode", type=click.Choice(defaults.MODES), default=None,
                         help=f"dense (the encoder), lexical (BM25) or hybrid (both, fused) [{default_note}]."),
            click.option("--fusion", type=click.Choice(_fusions()), default=None,
                         help=f"How hybrid fuses the two sides [{default_note}]."),
            click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=None,
                         help=f"Hybrid: the dense side's weight, 0-1 [{default_note}]."),
            click.option("--depth", type=click.IntRange(1, defaults.MAX_FUSION_DEPTH), default=None,
                         help=f"Hybrid: hits each side retrieves before fusion [{default_note}]."),
        )):
            f = opt(f)
        return f
    return wrap


SEARCH_MODE = search_mode_options("the index's default")
BUILD_MODE = search_mode_options(  # what `index build` stores as the folder's defaults
    f"{defaults.MODE_WITH_LEXICAL} with the lexical part, else {defaults.MODE_DENSE_ONLY}; fusion {defaults.FUSION}, "
    f"alpha {defaults.ALPHA}, depth {defaults.FUSION_DEPTH}")
LEXICAL_LANGUAGE = click.option("--lexical-language", default=defaults.LEXICAL_LANGUAGE, show_default=True,
                                help="Snowball stemmer of the lexical (BM25) part, or 'none'.")
LEXICAL_STOPWORDS = click.option("--lexical-stopwords", default=defaults.LEXICAL_STOPWORDS, show_default=True,
                                 help="Stop words of the lexical part: english, none, or a file of words.")


@dataclass(frozen=True)
class MilvusSpec:
    """A Milvus collection and the export that encodes its queries (what ``--milvus …`` names)."""

    target: MilvusTarget
    model: Path

    @property
    def name(self) -> str:
        return self.target.collection


def milvus_target(uri: str, collection: str, token: str | None) -> MilvusTarget:
    try:
        return MilvusTarget(uri, collection, token)
    except DataError as e:  # a malformed URI or collection name is bad usage (exit 2)
        raise click.UsageError(str(e)) from None


def _resolve(index_dir: Path | None, uri: str | None, collection: str | None, model: Path | None,
             token: str | None) -> Path | MilvusSpec:
    if uri is None:
        if collection is not None or model is not None:
            raise click.UsageError("--collection and --model go with --milvus URI")
        if index_dir is None:
            raise click.UsageError("give --index IDX_DIR, or --milvus URI --collection NAME --model EXPORT_DIR")
        return index_dir
    if index_dir is not None:
        raise click.UsageError("give either --index or --milvus, not both")
    if collection is None or model is None:
        raise click.UsageError("--milvus needs --collection NAME and --model EXPORT_DIR (the export the index was "
                               "built with)")
    return MilvusSpec(milvus_target(uri, collection, token), model)


def TARGET(f: Any) -> Any:
    """``--index IDX_DIR`` or ``--milvus URI --collection NAME --model EXPORT_DIR``, passed on as ``index_dir``."""

    @functools.wraps(f)
    def run(*args: Any, index_dir: Path | None, milvus_uri: str | None, collection: str | None,
            milvus_model: Path | None,
            milvus_token: str | None, **kwargs: Any) -> Any:
        return f(*args, index_dir=_resolve(index_dir, milvus_uri, collection, milvus_model, milvus_token), **kwargs)

    for opt in (
        TOKEN,
        click.option("--model", "milvus_model", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="With --milvus: the EXPORT_DIR the index was built with (or IDX_DIR/encoder)."),
        click.option("--collection", default=None, help="With --milvus: the collection's name."),
        click.option("--milvus", "milvus_uri", default=None,
                     help="A Milvus collection instead of IDX_DIR: a milvus-lite file (./x.db) or a server "
                          "(http://host:19530); written by `index export-milvus`."),
        click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None,
                     help="Index folder (IDX_DIR)."),
    ):
        run = opt(run)
    return run


def emit(obj: Any) -> None:
    """One JSON object on stdout."""
    click.echo(json.dumps(obj, ensure_ascii=False))


def open_engine(target: Path | MilvusSpec, writable: bool = False, save_every: int | None = None,
                **options: Any) -> Any:
    """An Engine on IDX_DIR, or on the Milvus collection of a ``MilvusSpec`` (``--milvus …``); ``options``:
    ``EngineOptions`` fields. ``save_every`` is a folder's (a collection has no log to fold)."""
    from ..engine import Engine

    opts = EngineOptions(**options)
    if isinstance(target, MilvusSpec):
        t = target.target
        return Engine.open_milvus(t.uri, t.collection, target.model, t.token, writable=writable, options=opts)
    folder = {"save_every": save_every} if save_every is not None else {}
    return Engine.open(target, writable=writable, options=opts, **folder)
