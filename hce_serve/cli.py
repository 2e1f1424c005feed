"""``hce-serve``: build, update, search and serve an index folder (DESIGN §5).

Results go to stdout (JSON where a program reads them), logs and progress bars to stderr. Errors the user
can fix exit 1 with one line; bad usage exits 2. Heavy modules (onnxruntime, hnswlib, FastAPI) are
imported only by the commands that need them, so ``hce-serve --help`` is instant.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from .clitools import HCEGroup, setup_logging, verbosity_options
from .errors import DataError, HCEError

log = logging.getLogger(__name__)

IDX = click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index folder (IDX_DIR).")
VARIANT = click.option("--variant", type=click.Choice(["auto", "int8", "fp32", "fp16"]), default="auto",
                       show_default=True, help="Encoder graph (auto: int8 on CPU).")
THREADS = click.option("--threads", type=click.IntRange(1, 1024), default=None, help="onnxruntime intra-op threads (1-1024).")
EXISTING = dict(exists=True, dir_okay=False, path_type=Path)


def _emit(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False))


def _engine(index_dir: Path, writable: bool = False, variant: str = "auto", threads: int | None = None) -> Any:
    from .engine import Engine

    return Engine.open(index_dir, writable=writable, variant=variant, threads=threads)


@click.group(cls=HCEGroup, context_settings={"help_option_names": ["-h", "--help"]})
@verbosity_options
def main(verbose: int, quiet: bool) -> None:
    """HCE serving runtime: index folders, search, evaluation and the HTTP server."""
    setup_logging(verbose, quiet)


@main.group(cls=HCEGroup)
def index() -> None:
    """Build and change index folders."""


@index.command("build")
@click.option("--model", "export_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="EXPORT_DIR written by hce-export onnx.")
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="corpus.jsonl[.gz] (BEIR).")
@IDX
@click.option("--overwrite", is_flag=True, help="Replace an index already in IDX_DIR.")
@click.option("--M", "m", type=click.IntRange(2, 256), default=16, show_default=True, help="HNSW graph degree.")
@click.option("--ef-construction", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("--ef", type=click.IntRange(1, 100_000), default=100, show_default=True, help="Search beam width.")
@click.option("--exact-threshold", type=click.IntRange(min=0), default=4096, show_default=True,
              help="Search exactly while the index holds at most this many documents.")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True, help="Documents per step.")
@VARIANT
@THREADS
def index_build(export_dir, corpus, index_dir, overwrite, m, ef_construction, ef, exact_threshold, batch_size,
                variant, threads) -> None:
    """Encode CORPUS with EXPORT_DIR's model into a new index folder."""
    from .engine import Engine
    from .index import IndexParams

    params = IndexParams(M=m, ef_construction=ef_construction, ef_search=ef, exact_threshold=exact_threshold)
    stats = Engine.build(export_dir, corpus, index_dir, params=params, overwrite=overwrite, variant=variant,
                         threads=threads, chunk=batch_size, progress=True)
    _emit({"index": str(index_dir), "live": stats["live"], "dim": stats["dim"]})


@index.command("add")
@IDX
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="More documents (BEIR jsonl).")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@VARIANT
@THREADS
def index_add(index_dir, corpus, batch_size, variant, threads) -> None:
    """Add documents; an id already in the index is replaced."""
    with _engine(index_dir, writable=True, variant=variant, threads=threads) as eng:
        res = eng.add_corpus(corpus, chunk=batch_size, progress=True)
        eng.save()
        _emit({"added": res.added, "replaced": res.replaced, "live": len(eng.index)})


def _read_ids_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


@index.command("delete")
@IDX
@click.option("--id", "ids", multiple=True, help="Document id to delete (repeatable).")
@click.option("--ids-file", type=click.Path(**EXISTING), help="File with one document id per line.")
def index_delete(index_dir, ids, ids_file) -> None:
    """Delete documents by id; unknown ids are reported, not an error."""
    if bool(ids) == bool(ids_file):
        raise click.UsageError("give either --id (one or more) or --ids-file")
    wanted = list(ids) if ids else _read_ids_file(ids_file)
    from .store import IndexStore

    # Deleting needs no encoder: open the store alone.
    with IndexStore.open(index_dir, writable=True) as store:
        res = store.delete(wanted)
        store.save()
        if res.missing:
            log.warning("%d ids were not in the index: %s", len(res.missing), ", ".join(res.missing[:10]))
        _emit({"deleted": len(res.deleted), "missing": res.missing, "live": len(store.index)})


@index.command("compact")
@IDX
def index_compact(index_dir) -> None:
    """Rebuild the graph without deleted slots."""
    from .store import IndexStore

    with IndexStore.open(index_dir, writable=True) as store:
        dropped = store.compact()
        _emit({"dropped": dropped, "live": len(store.index), "generation": store.manifest.generation})


@index.command("stats")
@IDX
def index_stats(index_dir) -> None:
    """Print the index's counts and parameters as JSON."""
    from .store import IndexStore

    with IndexStore.open(index_dir) as store:
        _emit(store.stats())


def _hits_json(hits: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"id": d, "score": round(s, 6)} for d, s in hits]


@main.command("search")
@IDX
@click.argument("query", nargs=-1)
@click.option("--k", type=int, default=10, show_default=True, help="Hits per query.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query on stdout.")
@click.option("--queries", type=click.Path(path_type=Path), help="queries.jsonl: batch mode.")
@click.option("--run", "run_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a TREC run file.")
@VARIANT
@THREADS
def search(index_dir, query, k, as_json, queries, run_path, variant, threads) -> None:
    """Search IDX_DIR for QUERY (or every query of --queries)."""
    text = " ".join(query)
    if bool(text) == bool(queries):
        raise click.UsageError("give either a QUERY argument or --queries FILE")
    if run_path and not queries:
        raise click.UsageError("--run needs --queries")
    from .beir import load_queries
    from .trec import write_run

    qmap = load_queries(queries) if queries else {"query": text}
    with _engine(index_dir, variant=variant, threads=threads) as eng:
        results = eng.search(list(qmap.values()), k=k, num_threads=-1)
    if run_path:
        write_run(run_path, dict(zip(qmap, results, strict=True)))
        log.info("wrote %d queries to %s", len(qmap), run_path)
        return
    for (qid, qtext), hits in zip(qmap.items(), results, strict=True):
        if as_json or queries:
            obj = {"query": qtext, "hits": _hits_json(hits)}
            _emit({"query_id": qid, **obj} if queries else obj)
        else:
            for rank, (doc_id, score) in enumerate(hits, 1):
                click.echo(f"{rank:>3}  {score:.4f}  {doc_id}")


@main.command("eval")
@IDX
@click.option("--queries", required=True, type=click.Path(path_type=Path), help="queries.jsonl")
@click.option("--qrels", required=True, type=click.Path(path_type=Path), help="qrels TSV (query-id, corpus-id, score).")
@click.option("--k", type=click.IntRange(100, 10_000), default=100, show_default=True, help="Depth retrieved per query.")
@VARIANT
@THREADS
def eval_cmd(index_dir, queries, qrels, k, variant, threads) -> None:
    """Search every judged query and print nDCG@10, R@10, R@100 and MRR@10 as JSON."""
    from .beir import check_qrels, load_qrels, load_queries
    from .metrics import evaluate

    qmap = load_queries(queries)
    judged = load_qrels(qrels)
    with _engine(index_dir, variant=variant, threads=threads) as eng:
        check = check_qrels(judged, qmap, eng.index.ids(), str(qrels))
        if not check.kept:
            raise DataError(f"{qrels}: no judgment refers to a known query and an indexed document")
        qids = sorted(check.kept)
        results = eng.search([qmap[q] for q in qids], k=k, num_threads=-1)
    run = {q: dict(hits) for q, hits in zip(qids, results, strict=True)}
    _emit({**evaluate(check.kept, run), "queries": len(qids), "index": str(index_dir)})


@main.command("http")
@IDX
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--token", default=None, help="Bearer token for write endpoints (default: $HCE_TOKEN).")
@click.option("--read-only", is_flag=True, help="Serve searches only; no writer lock is taken.")
@click.option("--save-every", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Fold the mutation log into a snapshot after this many writes (and on shutdown).")
@click.option("--max-k", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most queries or documents per request.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=8.0, show_default=True)
@VARIANT
@click.option("--threads", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="onnxruntime intra-op threads per request. Requests run in parallel, one core each, so 1 "
                   "avoids oversubscribing the cores under load; more lowers one query's latency at low load.")
def http(index_dir, host, port, token, read_only, save_every, max_k, max_batch, max_body_mb, variant, threads) -> None:
    """Serve IDX_DIR over HTTP (FastAPI + uvicorn). OpenAPI docs at /docs."""
    from .http import Limits, create_app, is_loopback

    token = token or os.environ.get("HCE_TOKEN") or None
    if not read_only and not token and not is_loopback(host):
        raise HCEError(f"refusing to serve writes on non-loopback address {host} without a token; "
                       "set HCE_TOKEN or --token (or pass --read-only)")
    try:
        import uvicorn
    except ImportError:
        from .errors import missing_dependency

        raise missing_dependency("uvicorn", "serve") from None
    eng = _engine(index_dir, writable=not read_only, variant=variant, threads=threads)
    if not read_only:
        eng.store.autosave_every = save_every
    limits = Limits(max_k=max_k, max_batch=max_batch, max_body_bytes=int(max_body_mb * 2**20))
    app = create_app(eng, token=token, limits=limits)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        eng.close(save=not read_only)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
