"""A small BEIR folder cut from a bigger one, for a short run of scripts/demo.sh (HCE_DEMO_DOCS): the first N
documents of the corpus, and of every qrels split only the queries whose judged documents are all among them.

    python -m benchmarks.demo_sample --data demo/data/scifact --docs 1000 --out demo-out/data

A kept query keeps all its judgments, so its metrics mean on the sample what they mean on the full corpus
(a query judged against a document left out would count a miss the encoder could never fix); the other
queries are left out of the sample. Documents and queries are copied line for line. The folder gets
``corpus.jsonl.gz``, ``queries.jsonl.gz``, ``qrels/<split>.tsv`` for each split of DATA, and ``sample.json``
saying what was taken (``benchmarks.demo`` puts it in the demo's table and result).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from hce_serve.errors import DataError
from hce_serve.formats import atomic, beir

SAMPLE_FILE = "sample.json"


def _write_gz(path: Path, lines: Iterable[str]) -> None:
    # mtime=0: the same sample gives the same bytes
    with atomic.atomic_open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
        for line in lines:
            gz.write(line.encode("utf-8") if line.endswith("\n") else (line + "\n").encode("utf-8"))


def sample(data: Path, docs: int, out: Path) -> dict[str, Any]:
    """Write the sample of ``data`` with its first ``docs`` documents into ``out``; returns what
    ``sample.json`` says. DataError when a split would keep no query."""
    if not data.is_dir():
        raise DataError(f"{data}: data folder not found")
    if out.resolve() == data.resolve():
        raise DataError(f"{out}: the sample would overwrite its own source; pick another --out")
    corpus = beir.resolve(data / "corpus.jsonl")
    # iter_corpus checks each line (ids, fields); iter_lines gives the same lines as written
    ids = [d.id for d in islice(beir.iter_corpus(corpus, empty="keep"), docs)]
    lines = [line for _, line in islice(beir.iter_lines(corpus), len(ids))]
    kept_docs = set(ids)
    splits = sorted(p.stem for p in (data / "qrels").glob("*.tsv"))
    if not splits:
        raise DataError(f"{data / 'qrels'}: no qrels split (*.tsv)")
    queries = beir.resolve(data / "queries.jsonl")
    known = beir.load_queries(queries)  # checks every line, so the filter below can parse them plainly
    qrels: dict[str, beir.Qrels] = {}
    for split in splits:
        judged = beir.load_qrels(beir.qrels_path(data, split))
        # a judgment of an unknown query is skipped here as everywhere else (hce_serve.formats.beir.check_qrels)
        qrels[split] = {q: j for q, j in judged.items() if q in known and all(d in kept_docs for d in j)}
        if not qrels[split]:
            raise DataError(f"{data}: no query of split {split!r} has all its judged documents among the first "
                            f"{len(ids)}; raise --docs")
    wanted = set().union(*qrels.values())
    query_lines = [line for _, line in beir.iter_lines(queries) if json.loads(line)["_id"] in wanted]

    (out / "qrels").mkdir(parents=True, exist_ok=True)
    _write_gz(out / "corpus.jsonl.gz", lines)
    _write_gz(out / "queries.jsonl.gz", query_lines)
    for split, judged in qrels.items():
        rows = [f"{q}\t{d}\t{g}\n" for q, j in judged.items() for d, g in j.items()]
        atomic.write_text(out / "qrels" / f"{split}.tsv", "query-id\tcorpus-id\tscore\n" + "".join(rows))
    info = {"source": str(data), "documents": len(ids),
            "queries": {split: len(judged) for split, judged in qrels.items()},
            "judgments": {split: sum(len(j) for j in judged.values()) for split, judged in qrels.items()}}
    atomic.write_text(out / SAMPLE_FILE, json.dumps(info, indent=2) + "\n")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="BEIR folder to sample")
    ap.add_argument("--docs", type=int, required=True, help="how many documents, from the corpus's start")
    ap.add_argument("--out", type=Path, required=True, help="folder of the sample (created; its files replaced)")
    args = ap.parse_args(argv)
    if args.docs < 1:
        ap.error(f"--docs must be at least 1, found {args.docs}")
    try:
        info = sample(args.data, args.docs, args.out)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"sample of {args.data}: the first {info['documents']} documents; queries kept "
          + ", ".join(f"{s} {n}" for s, n in info["queries"].items()) + f" -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
