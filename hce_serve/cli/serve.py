"""``hce-serve``: build, update, search and serve an index folder (DESIGN §5).

Results go to stdout (JSON where a program reads them), logs and progress bars to stderr. Errors the user
can fix exit 1 with one line; bad usage exits 2. Heavy modules (onnxruntime, hnswlib, FastAPI) are
imported only by the commands that need them, so ``hce-serve --help`` is instant. Every command goes
through ``Engine``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from .. import defaults
from ..errors import DataError, HCEError
from ..options import EngineOptions
from .common import HCEGroup
from .options import (
    EF,
    FILTER,
    IDX,
    QUERY_CACHE,
    QUERY_ENCODER,
    SEARCH_MODE,
    SUBTREE,
    TARGET,
    THREADS,
    VARIANT,
    emit,
    open_engine,
)

log = logging.getLogger(__name__)


@click.group(cls=HCEGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """HCE serving runtime: index folders, search, evaluation and the HTTP server."""


def _print_hits(hits: list[Any]) -> None:
    for rank, h in enumerate(hits, 1):
        click.echo(f"{rank:>3}  {h.score:.4f}  {h.id}" + (f"  {h.title}" if h.title else ""))
        if snippet := h.snippet():
            click.echo(f"{'':>13}{snippet}")
        if h.explain is not None:
            sides = [f"{s} " + (f"#{v['rank']} {v['score']:.4f}" if (v := h.explain[s]) else "-")
                     for s in ("dense", "lexical")]
            click.echo(f"{'':>13}[{' | '.join(sides)}]")


@main.command("search")
@TARGET
@click.argument("query", nargs=-1)
@click.option("--k", type=click.IntRange(*EngineOptions.K), default=defaults.K, show_default=True,
              help="Hits per query.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query on stdout.")
@click.option("--queries", type=click.Path(path_type=Path), help="queries.jsonl: batch mode.")
@click.option("--run", "run_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a TREC run file.")
@EF
@FILTER
@SUBTREE
@click.option("--fields", default=",".join(defaults.FIELDS), show_default=True,
              help="Stored fields in --json hits (comma-separated; empty: ids and scores only).")
@SEARCH_MODE
@click.option("--explain", is_flag=True, help="Show each side's rank and score in every hit (dense, lexical).")
@VARIANT
@QUERY_ENCODER
@QUERY_CACHE
@THREADS
def search(index_dir, query, k, as_json, queries, run_path, ef, flt, subtree, fields, mode, fusion, alpha, depth,
           explain, variant, query_encoder, query_cache, threads) -> None:
    """Search IDX_DIR (or a Milvus collection: --milvus) for QUERY (or every query of --queries)."""
    text = " ".join(query)
    if bool(text) == bool(queries):
        raise click.UsageError("give either a QUERY argument or --queries FILE")
    if run_path and not queries:
        raise click.UsageError("--run needs --queries")
    from ..formats.beir import load_queries
    from ..formats.trec import write_run

    qmap = load_queries(queries) if queries else {"query": text}
    with open_engine(index_dir, variant=variant, threads=threads, query_encoder=query_encoder,
                     query_cache=query_cache) as eng:
        results = eng.search_batch(list(qmap.values()), k=k, filter=flt, ef=ef, subtree=subtree,
                                   fields=() if run_path else fields, num_threads=-1, progress=bool(queries),
                                   mode=mode, fusion=fusion, alpha=alpha, depth=depth, explain=explain)
    if run_path:
        write_run(run_path, {q: [(h.id, h.score) for h in hits] for q, hits in zip(qmap, results, strict=True)})
        log.info("wrote %d queries to %s", len(qmap), run_path)
        return
    for (qid, qtext), hits in zip(qmap.items(), results, strict=True):
        if as_json or queries:
            obj = {"query": qtext, "hits": [h.to_dict() for h in hits]}
            emit({"query_id": qid, **obj} if queries else obj)
        else:
            _print_hits(hits)


@main.command("get")
@TARGET
@click.option("--id", "doc_id", required=True, help="Document id.")
def get(index_dir, doc_id) -> None:
    """Print the stored document with this id as JSON (_id, title, text, metadata)."""
    with open_engine(index_dir) as eng:
        doc = eng.get(doc_id)
    if doc is None:
        raise DataError(f"document {doc_id!r} is not in the index")
    emit({"_id": doc.id, "title": doc.title, "text": doc.text, "metadata": doc.metadata or {}})


@main.command("eval")
@IDX
@click.option("--queries", required=True, type=click.Path(path_type=Path), help="queries.jsonl")
@click.option("--qrels", required=True, type=click.Path(path_type=Path), help="qrels TSV (query-id, corpus-id, score).")
@click.option("--k", type=click.IntRange(100, EngineOptions.K.hi), default=defaults.EVAL_K, show_default=True,
              help="Depth retrieved per query.")
@EF
@SEARCH_MODE
@VARIANT
@QUERY_ENCODER
@QUERY_CACHE
@THREADS
def eval_cmd(index_dir, queries, qrels, k, ef, mode, fusion, alpha, depth, variant, query_encoder, query_cache,
             threads) -> None:
    """Search every judged query and print nDCG@10, R@10, R@100 and MRR@10 as JSON."""
    from ..formats.beir import check_qrels, load_qrels, load_queries
    from ..lexical import modes
    from ..metrics import evaluate

    qmap = load_queries(queries)
    judged = load_qrels(qrels)
    with open_engine(index_dir, variant=variant, threads=threads, query_encoder=query_encoder,
                     query_cache=query_cache) as eng:
        check = check_qrels(judged, qmap, eng.ids(), str(qrels))
        if not check.kept:
            raise DataError(f"{qrels}: no judgment refers to a known query and an indexed document")
        qids = sorted(check.kept)
        results = eng.search_batch([qmap[q] for q in qids], k=k, ef=ef, fields=(), num_threads=-1, progress=True,
                                   mode=mode, fusion=fusion, alpha=alpha, depth=depth)
        used = modes.resolve(eng.search_defaults, mode, fusion, alpha, depth)
    # rank-derived scores: trec_eval orders by score, and fused scores can tie
    run = {q: {h.id: float(len(hits) - r) for r, h in enumerate(hits)} for q, hits in zip(qids, results, strict=True)}
    setting = used.to_dict() if used.mode == "hybrid" else {"mode": used.mode}
    emit({**evaluate(check.kept, run), "queries": len(qids), "index": str(index_dir), **setting})


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@main.command("http")
@TARGET
@click.option("--host", default=defaults.HOST, show_default=True, help="Bind address (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=defaults.PORT, show_default=True)
@click.option("--token", default=None, help="Bearer token for write endpoints (default: $HCE_TOKEN).")
@click.option("--read-only", is_flag=True, help="Serve searches only; no writer lock is taken.")
@click.option("--save-every", type=click.IntRange(min=1), default=defaults.SAVE_EVERY, show_default=True,
              help="Fold the mutation log into a snapshot after this many writes (and on shutdown).")
@click.option("--max-k", type=click.IntRange(*EngineOptions.K), default=defaults.HTTP_MAX_K, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=defaults.HTTP_MAX_BATCH, show_default=True,
              help="Most queries or documents per request.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=defaults.HTTP_MAX_BODY_BYTES / 2**20,
              show_default=True)
@VARIANT
@QUERY_ENCODER
@QUERY_CACHE
@click.option("--threads", type=click.IntRange(*EngineOptions.THREADS), default=defaults.HTTP_THREADS,
              show_default=True,
              help="Threads per encoder call: onnxruntime's intra-op threads, and an ivf-sq8 index's cell scan. "
                   "Batches run in parallel, the cores divided by this many threads each, so 1 keeps every core busy "
                   "under load; more lowers one query's latency at low load.")
@click.option("--max-batch-wait", type=click.FloatRange(0, 1000), default=defaults.HTTP_MAX_BATCH_WAIT_MS,
              show_default=True, help="Micro-batching: milliseconds a search may wait for concurrent ones to share "
                                      "its encoder call, only while another batch runs (a lone query never waits); "
                                      "0 turns batching off.")
@click.option("--max-batch-queries", type=click.IntRange(1, 4096), default=defaults.HTTP_MAX_BATCH_QUERIES,
              show_default=True, help="Micro-batching: most queries in one shared encoder call.")
@click.option("--batch-threads", type=click.IntRange(1, 1024), default=None,
              help="Micro-batching: batches run at once, each on its own thread [the cores divided by --threads, "
                   "shared among --workers].")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Server processes on one socket, each with its own copy of the index, read-only: with more than "
                   "1, write requests are refused (one writer per index; use --workers 1 to serve writes).")
def http(index_dir, host, port, token, read_only, save_every, max_k, max_batch, max_body_mb, variant, query_encoder,
         query_cache, threads, max_batch_wait, max_batch_queries, batch_threads, workers) -> None:
    """Serve IDX_DIR (or a Milvus collection: --milvus) over HTTP (FastAPI + uvicorn). OpenAPI docs at /docs."""
    from ..http import Batching, Limits, create_app, is_loopback

    token = token or os.environ.get("HCE_TOKEN") or None
    limits = Limits(max_k=max_k, max_batch=max_batch, max_body_bytes=int(max_body_mb * 2**20))
    if workers > 1:
        _serve_workers(index_dir, host, port, workers, limits, max_batch_wait, max_batch_queries, batch_threads,
                       {"variant": variant, "threads": threads, "query_encoder": query_encoder,
                        "query_cache": query_cache})
        return
    batching = Batching(max_wait_ms=max_batch_wait, max_queries=max_batch_queries, workers=batch_threads)
    if not read_only and not token and not is_loopback(host):
        raise HCEError(f"refusing to serve writes on non-loopback address {host} without a token; "
                       "set HCE_TOKEN or --token (or pass --read-only)")
    try:
        import uvicorn
    except ImportError:
        from ..errors import missing_dependency

        raise missing_dependency("uvicorn", "serve") from None
    eng = open_engine(index_dir, writable=not read_only, variant=variant, threads=threads, save_every=save_every,
                      query_encoder=query_encoder, query_cache=query_cache)
    try:
        eng.encoder  # noqa: B018 - load the graph now: a broken export fails here, not on the first request
        app = create_app(eng, token=token, limits=limits, batching=batching)
        log.info("serving %s (%d documents%s) on %s — API docs at %s/docs", index_dir.name, len(eng),
                 ", read-only" if read_only else "", _url(host, port), _url(host, port))
        log.info("queries through the %s encoder (%s); query cache: %d entries", eng.encoder.query_encoder,
                 eng.encoder.query_graph, query_cache)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        eng.close(save=not read_only)


def _serve_workers(target: Any, host: str, port: int, workers: int, limits: Any, max_batch_wait: float,
                   max_batch_queries: int, batch_threads: int | None, options: dict[str, Any]) -> None:
    """``--workers N``: N read-only processes (``http/workers.py``). The index and its encoder are opened here
    first, so a broken folder or export fails once with its message, not in every worker process."""
    from ..http import Batching
    from ..http import workers as multi
    from ..http.batcher import available_cores

    with open_engine(target, writable=False, **options) as eng:
        eng.encoder  # noqa: B018
        live = len(eng)
    # the cores are shared by the processes: each runs its batches on its share
    per_process = batch_threads or max(1, available_cores() // (workers * (options["threads"] or 1)))
    batching = Batching(max_wait_ms=max_batch_wait, max_queries=max_batch_queries, workers=per_process)
    log.info("serving %s (%d documents, read-only) with %d worker processes on %s — API docs at %s/docs",
             target.name, live, workers, _url(host, port), _url(host, port))
    multi.serve(target, host, port, workers, options, limits, batching)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
