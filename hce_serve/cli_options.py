"""Options and helpers the ``hce-serve`` commands share (defaults come from ``defaults.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from . import defaults
from .errors import DataError

IDX = click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder (IDX_DIR).")
VARIANT = click.option("--variant", type=click.Choice(["auto", "int8", "fp32", "fp16"]), default=defaults.VARIANT,
                       show_default=True, help="Encoder graph (auto: int8 on CPU).")
QUERY_ENCODER = click.option(
    "--query-encoder", type=click.Choice(defaults.QUERY_ENCODERS), default=defaults.QUERY_ENCODER, show_default=True,
    help="Graph that encodes queries: the export's distilled shallow one when it has one (auto), the document "
         "graph (full), or the shallow one or an error (shallow).")
QUERY_CACHE = click.option("--query-cache", type=click.IntRange(min=0), default=defaults.QUERY_CACHE, show_default=True,
                           help="Query embeddings kept in an LRU cache (0: off).")
THREADS = click.option("--threads", type=click.IntRange(1, 1024), default=None, help="onnxruntime intra-op threads (1-1024).")
BATCH = click.option("--batch-size", type=click.IntRange(1, defaults.MAX_BATCH_SIZE), default=defaults.BATCH_SIZE, show_default=True,
                     help="Documents encoded and written per step.")
SKIP_EMPTY = click.option("--skip-empty", is_flag=True,
                          help="Leave out documents with empty title and text (default: index them, with a warning).")
EF = click.option("--ef", type=click.IntRange(1, 100_000), default=None,
                  help="Search breadth for these queries: the HNSW beam, or the IVF cells scanned [the index's own, set at build].")
EXISTING = dict(exists=True, dir_okay=False, path_type=Path)


class FilterParam(click.ParamType):
    """``--filter '{"field": value}'`` (a JSON object; a list value means any of)."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        from .checks import check_filter

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


def emit(obj: Any) -> None:
    """One JSON object on stdout."""
    click.echo(json.dumps(obj, ensure_ascii=False))


def open_engine(index_dir: Any, writable: bool = False, variant: str = defaults.VARIANT,
                threads: int | None = None, **kwargs: Any) -> Any:
    """An Engine on IDX_DIR, or on the Milvus collection of a ``cli_backends.MilvusSpec`` (``--milvus …``)."""
    from .cli_backends import MilvusSpec
    from .engine import Engine

    if isinstance(index_dir, MilvusSpec):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("save_every", "checksums")}  # folder-only knobs
        t = index_dir.target
        return Engine.open_milvus(t.uri, t.collection, index_dir.model, t.token, writable=writable, variant=variant,
                                  threads=threads, **kwargs)
    return Engine.open(index_dir, writable=writable, variant=variant, threads=threads, **kwargs)
