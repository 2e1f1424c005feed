"""``hce-serve`` beyond one machine: the Milvus backend's options and ``index export-milvus``, and ``--ray``.

``TARGET`` stands where ``--index`` stood on the commands that work on either backend (search, get, http,
index add/delete/stats): ``--index IDX_DIR``, or ``--milvus URI --collection NAME --model EXPORT_DIR``. The
options fold into the command's one ``index_dir`` argument (a ``Path`` or a ``MilvusSpec``), which
``cli_options.open_engine`` opens as ``Engine.open`` or ``Engine.open_milvus``: the command itself is the
same code for both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import defaults
from .cli_options import IDX, emit, open_engine
from .errors import DataError
from .milvus_layout import INDEX_TYPES, MilvusTarget

TOKEN = click.option("--milvus-token", "milvus_token", envvar="MILVUS_TOKEN", default=None,
                     help="Milvus server credentials, user:password or an API key (default: $MILVUS_TOKEN).")


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
        raise click.UsageError("--milvus needs --collection NAME and --model EXPORT_DIR (the export the index was built with)")
    return MilvusSpec(milvus_target(uri, collection, token), model)


def TARGET(f: Any) -> Any:
    """``--index IDX_DIR`` or ``--milvus URI --collection NAME --model EXPORT_DIR``, passed on as ``index_dir``."""

    @functools.wraps(f)
    def run(*args: Any, index_dir: Path | None, milvus_uri: str | None, collection: str | None, milvus_model: Path | None,
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


def RAY(f: Any) -> Any:
    """``--ray``, ``--ray-address``, ``--ray-workers`` for ``index build``, passed on as ``ray`` (RayOptions or None)."""

    @functools.wraps(f)
    def run(*args: Any, use_ray: bool, ray_address: str | None, ray_workers: int | None, **kwargs: Any) -> Any:
        ray = None
        if use_ray or ray_address or ray_workers:
            from .ray_encode import RayOptions

            ray = RayOptions(address=ray_address, workers=ray_workers, threads=kwargs.get("threads") or 1)
        return f(*args, ray=ray, **kwargs)

    for opt in (
        click.option("--ray-workers", type=click.IntRange(min=1), default=None,
                     help="Encoder actors on Ray [the cluster's CPUs / --threads]."),
        click.option("--ray-address", default=None,
                     help="A running Ray cluster (auto, ray://head:10001, head:6379); implies --ray."),
        click.option("--ray", "use_ray", is_flag=True,
                     help="Encode the corpus on Ray actors (Ray Data map_batches; --threads each, default 1): "
                          "a local Ray unless --ray-address. Same vectors as one process."),
    ):
        run = opt(run)
    return run


@click.command("export-milvus")
@IDX
@click.option("--uri", required=True, help="A milvus-lite file (./x.db) or a Milvus server (http://host:19530).")
@click.option("--collection", required=True, help="Collection to create (letters, digits, underscores).")
@TOKEN
@click.option("--index-type", type=click.Choice(INDEX_TYPES), default=None,
              help=f"Milvus vector index (metric IP) [{defaults.MILVUS_INDEX} for an hnsw folder, IVF_SQ8 for an ivf-sq8 one].")
@click.option("--M", "m", type=click.IntRange(2, 2048), default=None, help="HNSW graph degree [the index folder's].")
@click.option("--ef-construction", type=click.IntRange(1, 65_536), default=None, help="HNSW build beam [the folder's].")
@click.option("--ef", type=click.IntRange(1, 65_536), default=None,
              help="HNSW search beam stored as the collection's default [an hnsw folder's].")
@click.option("--nlist", type=click.IntRange(1, 65_536), default=None, help="IVF cells [~4 sqrt(documents)].")
@click.option("--nprobe", type=click.IntRange(1, 65_536), default=defaults.MILVUS_NPROBE, show_default=True,
              help="IVF cells searched per query.")
@click.option("--overwrite", is_flag=True, help="Drop an existing collection of that name first.")
def export_milvus(index_dir, uri, collection, milvus_token, index_type, m, ef_construction, ef, nlist, nprobe,
                  overwrite) -> None:
    """Copy IDX_DIR's live documents (vectors, ids, tree paths, stored fields) into a Milvus collection."""
    from .milvus_export import export_index, vector_index_for

    target = milvus_target(uri, collection, milvus_token)
    with open_engine(index_dir) as eng:
        vindex = vector_index_for(eng.store, index_type, m, ef_construction, ef, nlist, nprobe)
        emit({"uri": uri, **export_index(eng, target, vindex, overwrite=overwrite, progress=True)})
