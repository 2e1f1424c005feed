"""``hce-serve index build|add|delete|compact|stats|export-milvus``: build and change index folders.

Every command goes through ``Engine``; delete, compact and stats never load the encoder.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import click

from .. import defaults
from ..errors import DataError
from ..milvus.layout import INDEX_TYPES, IVF_PARAM
from ..options import KINDS, EngineOptions, IndexParams
from .common import HCEGroup
from .options import (
    BATCH,
    BUILD_MODE,
    EXISTING,
    IDX,
    LEXICAL_LANGUAGE,
    LEXICAL_STOPWORDS,
    SKIP_EMPTY,
    TARGET,
    THREADS,
    TOKEN,
    VARIANT,
    emit,
    milvus_target,
    open_engine,
)

log = logging.getLogger(__name__)


def RAY(f: Any) -> Any:
    """``--ray``, ``--ray-address``, ``--ray-workers`` for ``index build``, passed on as ``ray`` (``RayOptions`` or
    None)."""

    @functools.wraps(f)
    def run(*args: Any, use_ray: bool, ray_address: str | None, ray_workers: int | None, **kwargs: Any) -> Any:
        ray = None
        if use_ray or ray_address or ray_workers:
            from ..folder.ray_encode import RayOptions

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


@click.group(cls=HCEGroup)
def index() -> None:
    """Build and change index folders (add, delete and stats also on a Milvus collection: --milvus)."""


@index.command("build")
@click.option("--model", "export_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="EXPORT_DIR written by hce-export onnx.")
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="corpus.jsonl[.gz] (BEIR).")
@IDX
@click.option("--overwrite", is_flag=True, help="Replace an index already in IDX_DIR.")
@click.option("--M", "m", type=click.IntRange(*EngineOptions.M), default=defaults.M, show_default=True,
              help="HNSW graph degree.")
@click.option("--ef-construction", type=click.IntRange(*EngineOptions.EF), default=defaults.EF_CONSTRUCTION,
              show_default=True)
@click.option("--ef", type=click.IntRange(*EngineOptions.EF), default=None,
              help="Default search breadth (searches may pass their own): the HNSW beam "
                   f"[{EngineOptions.default_ef('hnsw')}], or the IVF cells scanned, nprobe "
                   f"[{EngineOptions.default_ef('ivf-sq8')}].")
@click.option("--index-type", "kind", type=click.Choice(KINDS), default=defaults.INDEX_TYPE, show_default=True,
              help="Vector structure: an hnswlib graph, or faiss IVF cells of 8-bit codes re-ranked on fp32 "
                   "(faster at millions of documents; needs the 'ivf' extra).")
@click.option("--nlist", type=click.IntRange(*EngineOptions.NLIST), default=defaults.NLIST, show_default=True,
              help="ivf-sq8: cells (0: about the square root of the corpus, relearnt as it doubles).")
@click.option("--refine", type=click.IntRange(*EngineOptions.REFINE), default=defaults.REFINE, show_default=True,
              help="ivf-sq8: candidates re-scored on fp32 vectors per hit.")
@click.option("--exact-threshold", type=click.IntRange(min=0), default=defaults.EXACT_THRESHOLD, show_default=True,
              help="Search exactly while the index holds at most this many documents.")
@click.option("--no-store", is_flag=True, help="Keep ids and vectors only: no stored title/text/metadata.")
@click.option("--no-lexical", is_flag=True, help="Leave out the lexical (BM25) part: a dense-only index.")
@LEXICAL_LANGUAGE
@LEXICAL_STOPWORDS
@BUILD_MODE
@SKIP_EMPTY
@BATCH
@VARIANT
@THREADS
@RAY
def index_build(export_dir, corpus, index_dir, overwrite, m, ef_construction, ef, kind, nlist, refine, exact_threshold,
                no_store, no_lexical, lexical_language, lexical_stopwords, mode, fusion, alpha, depth, skip_empty,
                batch_size, variant, threads, ray) -> None:
    """Encode CORPUS with EXPORT_DIR's model into a new index folder."""
    from ..engine import Engine

    if kind == "ivf-sq8":
        from ..index.ivf import faiss_module

        faiss_module()  # a missing extra fails before anything is encoded
    params = IndexParams(M=m, ef_construction=ef_construction, ef_search=ef, exact_threshold=exact_threshold,
                         kind=kind, nlist=nlist, refine=refine)
    stats = Engine.build(export_dir, corpus, index_dir, params, overwrite=overwrite, variant=variant, threads=threads,
                         batch_size=batch_size, progress=True, store_documents=not no_store, skip_empty=skip_empty,
                         ray=ray, lexical=not no_lexical, lexical_language=lexical_language,
                         lexical_stopwords=lexical_stopwords,
                         search={k: v
                                 for k, v in (("mode", mode), ("fusion", fusion), ("alpha", alpha), ("depth", depth))
                                 if v is not None})
    emit({"index": str(index_dir), **{k: stats[k] for k in ("live", "dim", "empty", "skipped_empty", "stores_documents",
                                                            "lexical")}})


@index.command("build-lexical")
@IDX
@LEXICAL_LANGUAGE
@LEXICAL_STOPWORDS
def index_build_lexical(index_dir, lexical_language, lexical_stopwords) -> None:
    """Add the lexical (BM25) part to an index folder built without one, from its stored documents."""
    from ..engine import Engine
    from ..lexical import Analyzer

    analyzer = Analyzer.create(lexical_language, lexical_stopwords)
    with Engine.open(index_dir, writable=True) as eng:
        stats = eng.build_lexical(analyzer)
    emit({"index": str(index_dir), "lexical": stats})


@index.command("add")
@TARGET
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="More documents (BEIR jsonl).")
@SKIP_EMPTY
@BATCH
@VARIANT
@THREADS
def index_add(index_dir, corpus, skip_empty, batch_size, variant, threads) -> None:
    """Add documents; an id already in the index is replaced."""
    with open_engine(index_dir, writable=True, variant=variant, threads=threads) as eng:
        res = eng.add_corpus(corpus, batch_size=batch_size, progress=True, skip_empty=skip_empty)
        eng.save()
        emit({"added": res.added, "replaced": res.replaced, "empty": res.empty, "live": len(eng)})


def _read_ids_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


@index.command("delete")
@TARGET
@click.option("--id", "ids", multiple=True, help="Document id to delete (repeatable).")
@click.option("--ids-file", type=click.Path(**EXISTING), help="File with one document id per line.")
def index_delete(index_dir, ids, ids_file) -> None:
    """Delete documents by id; unknown ids are reported, not an error."""
    if bool(ids) == bool(ids_file):
        raise click.UsageError("give either --id (one or more) or --ids-file")
    wanted = list(ids) if ids else _read_ids_file(ids_file)
    with open_engine(index_dir, writable=True) as eng:
        res = eng.delete(wanted)
        eng.save()
        if res.missing:
            log.warning("%d ids were not in the index: %s", len(res.missing), ", ".join(res.missing[:10]))
        emit({"deleted": res.deleted, "missing": res.missing, "live": len(eng)})


@index.command("compact")
@IDX
def index_compact(index_dir) -> None:
    """Rebuild the graph without deleted slots."""
    with open_engine(index_dir, writable=True) as eng:
        dropped = eng.compact()
        emit({"dropped": dropped, "live": len(eng), "generation": eng.stats()["generation"]})


@index.command("stats")
@TARGET
def index_stats(index_dir) -> None:
    """Print the index's counts and parameters as JSON."""
    with open_engine(index_dir) as eng:
        emit(eng.stats())


@index.command("export-milvus")
@IDX
@click.option("--uri", required=True, help="A milvus-lite file (./x.db) or a Milvus server (http://host:19530).")
@click.option("--collection", required=True, help="Collection to create (letters, digits, underscores).")
@TOKEN
@click.option("--index-type", type=click.Choice(INDEX_TYPES), default=None,
              help=f"Milvus vector index (metric IP) [{defaults.MILVUS_INDEX} for an hnsw folder, IVF_SQ8 for an "
                   "ivf-sq8 one].")
@click.option("--M", "m", type=click.IntRange(*EngineOptions.M), default=None,
              help="HNSW graph degree [the index folder's].")
@click.option("--ef-construction", type=click.IntRange(*EngineOptions.EF), default=None,
              help="HNSW build beam [the folder's].")
@click.option("--ef", type=click.IntRange(*EngineOptions.EF), default=None,
              help="HNSW search beam stored as the collection's default [an hnsw folder's].")
@click.option("--nlist", type=click.IntRange(*IVF_PARAM), default=None, help="IVF cells [~4 sqrt(documents)].")
@click.option("--nprobe", type=click.IntRange(*IVF_PARAM), default=defaults.MILVUS_NPROBE, show_default=True,
              help="IVF cells searched per query.")
@click.option("--overwrite", is_flag=True, help="Drop an existing collection of that name first.")
def export_milvus(index_dir, uri, collection, milvus_token, index_type, m, ef_construction, ef, nlist, nprobe,
                  overwrite) -> None:
    """Copy IDX_DIR's live documents (vectors, ids, tree paths, stored fields) into a Milvus collection."""
    from ..milvus.export import export_index, vector_index_for

    target = milvus_target(uri, collection, milvus_token)
    with open_engine(index_dir) as eng:
        vindex = vector_index_for(eng.store, index_type, m, ef_construction, ef, nlist, nprobe)
        emit({"uri": uri, **export_index(eng, target, vindex, overwrite=overwrite, progress=True)})
