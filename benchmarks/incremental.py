"""The paper's add/remove claim, measured through the product's own commands.

1. Withhold a fraction of SciFact's documents (default 20 %) from training *and* from the tree: write a
   BEIR folder without them (train pairs pointing at them dropped) and ``hce-train fit`` HCE on it.
2. Export, ``hce-serve index build`` on the seen documents, ``hce-serve index add`` the withheld ones.
3. nDCG@10 on test queries whose positives are all new vs all seen, against a model trained the same way
   on every document (same steps, batch, seed) and against the zero-shot base.
4. ``hce-serve index delete`` documents (judged positives among them), search every query at k=100 before
   and after ``compact`` and after a reload, and count deleted ids returned (must be 0).

    python -m benchmarks.incremental --quick      # 400-document SciFact subset, 4 steps, batch 8
    python -m benchmarks.incremental              # full SciFact corpus, 60 steps, batch 32

The subset keeps every test-judged document and fills up with random others (stated in the JSON); training
pairs are those whose positive is in it. Budgets are CPU-sized: the point is the add/remove mechanics and
new-vs-seen gap, not the quality ceiling (that is quality.py's job).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.encoders import base_model_path, ensure_export
from benchmarks.harness import cli, paths, provenance
from hce_serve.documents import Document
from hce_serve.formats.beir import Qrels, load_corpus, load_qrels, load_queries
from hce_serve.formats.trec import read_run
from hce_serve.metrics import evaluate

log = logging.getLogger(__name__)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _write_qrels(path: Path, qrels: Qrels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore\n"] + [f"{q}\t{d}\t{g}\n" for q, ds in qrels.items() for d, g in ds.items()]
    path.write_text("".join(lines), encoding="utf-8")


def _doc_rows(docs: list[Document]) -> list[dict]:
    return [{"_id": d.id, "title": d.title, "text": d.text} for d in docs]


def split_corpus(corpus: list[Document], qrels: dict[str, Qrels], withhold: float, max_docs: int | None,
                 seed: int) -> tuple[list[Document], list[Document]]:
    """(seen, new): an optional subset (every test-judged document, then random others, train positives
    among them by chance), then a random ``withhold`` share of it held out."""
    rng = random.Random(seed)
    docs = list(corpus)
    if max_docs and len(docs) > max_docs:
        judged = {d for ds in qrels.get("test", {}).values() for d in ds}
        others = [d.id for d in docs if d.id not in judged]
        rng.shuffle(others)
        keep_ids = judged | set(others[: max(0, max_docs - len(judged))])
        docs = [d for d in docs if d.id in keep_ids]
    order = list(range(len(docs)))
    rng.shuffle(order)
    cut = set(order[: int(round(withhold * len(docs)))])
    return [d for i, d in enumerate(docs) if i not in cut], [d for i, d in enumerate(docs) if i in cut]


def write_folder(root: Path, docs: list[Document], queries: dict[str, str], qrels: dict[str, Qrels]) -> Path:
    """A BEIR folder of ``docs``; judgments pointing at other documents are dropped."""
    ids = {d.id for d in docs}
    root.mkdir(parents=True, exist_ok=True)
    _write_jsonl(root / "corpus.jsonl", _doc_rows(docs))
    _write_jsonl(root / "queries.jsonl", [{"_id": q, "text": t} for q, t in queries.items()])
    for split, qr in qrels.items():
        kept = {q: {d: g for d, g in ds.items() if d in ids} for q, ds in qr.items()}
        _write_qrels(root / "qrels" / f"{split}.tsv", {q: ds for q, ds in kept.items() if ds})
    return root


def query_groups(test: Qrels, new_ids: set[str]) -> dict[str, Qrels]:
    """Test queries whose positives are all new, all seen, or mixed."""
    out: dict[str, Qrels] = {"new": {}, "seen": {}, "mixed": {}}
    for q, ds in test.items():
        n = sum(d in new_ids for d in ds)
        out["new" if n == len(ds) else "seen" if n == 0 else "mixed"][q] = ds
    return out


def sh(tool: str, *args: str) -> str:
    """Run a CLI step (``hce-serve``, ``hce-train``); its stdout (JSON) is returned, its stderr goes to ours."""
    cmd = [*cli.tool_argv(tool), *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)} exited {proc.returncode}")
    log.info("%.1fs  %s %s", time.perf_counter() - t, tool, " ".join(args[:3]))
    return proc.stdout


def train(data: Path, out: Path, args: argparse.Namespace) -> float:
    t = time.perf_counter()
    if not (out / "hce_model.json").is_file() or args.retrain:
        sh("hce-train", "fit", "--data", str(data), "--split", "train", "--out", str(out), "--base-model",
           str(args.base), "--negatives", "hce", "--max-steps", str(args.steps), "--batch-size", str(args.batch),
           "--seed", str(args.seed), "--doc-max-length", str(args.doc_max_length), "--device", "cpu",
           "--no-progress", "--overwrite", *args.train_arg)
    return round(time.perf_counter() - t, 1)


def search_run(index: Path, queries: Path, out: Path, k: int = 100) -> dict[str, dict[str, float]]:
    sh("hce-serve", "search", "--index", str(index), "--queries", str(queries), "--k", str(k), "--run", str(out))
    return read_run(out)


def grouped_metrics(run: dict, groups: dict[str, Qrels]) -> dict[str, Any]:
    return {g: {"queries": len(qr), **evaluate(qr, run)} for g, qr in groups.items() if qr}


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "incremental")
    ap.add_argument("--data", default=str(paths.SHARED_DATA / "scifact"))
    ap.add_argument("--withhold", type=float, default=0.2)
    ap.add_argument("--max-docs", type=int, default=None, help="corpus subset size (default 400 quick, all full)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="batch size (8 quick, 32 full)")
    ap.add_argument("--doc-max-length", type=int, default=None, help="training document length (128 quick, 256 full)")
    ap.add_argument("--delete", type=float, default=0.1, help="fraction of documents deleted at the end")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", default=None)
    ap.add_argument("--train-arg", action="append", default=[], help="extra hce-train fit argument (repeat)")
    ap.add_argument("--retrain", action="store_true", help="retrain even when a model from an earlier run exists")
    ap.add_argument("--work", default=str(paths.CACHE / "incremental"))
    args = cli.parse(ap, argv)
    args.base = args.base or str(base_model_path())
    args.max_docs = args.max_docs if args.max_docs is not None else (400 if args.quick else None)
    args.steps = args.steps or (4 if args.quick else 60)
    args.batch = args.batch or (8 if args.quick else 32)
    args.doc_max_length = args.doc_max_length or (128 if args.quick else 256)
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    src = Path(args.data)
    corpus = load_corpus(src / "corpus.jsonl")
    queries = load_queries(src / "queries.jsonl")
    qrels = {s: load_qrels(src / "qrels" / f"{s}.tsv") for s in ("train", "test")}
    seen, new = split_corpus(corpus, qrels, args.withhold, args.max_docs, args.seed)
    new_ids = {d.id for d in new}
    d80 = write_folder(work / "data-seen", seen, queries, qrels)
    d100 = write_folder(work / "data-all", seen + new, queries, qrels)
    _write_jsonl(work / "new.jsonl", _doc_rows(new))
    all_ids = {d.id for d in seen + new}
    test = {q: {d: g for d, g in ds.items() if d in all_ids} for q, ds in qrels["test"].items()}
    test = {q: ds for q, ds in test.items() if ds}
    groups = query_groups(test, new_ids)
    _write_jsonl(work / "test-queries.jsonl", [{"_id": q, "text": queries[q]} for q in test])

    res: dict[str, Any] = {"docs": len(seen) + len(new), "seen_docs": len(seen), "new_docs": len(new),
                           "test_queries": {g: len(v) for g, v in groups.items()},
                           "train_pairs": {"seen-only model": sum(len(v) for v in _kept(qrels["train"], seen)),
                                           "all-docs model": sum(len(v) for v in _kept(qrels["train"], seen + new))},
                           "budget": {"max_steps": args.steps, "batch_size": args.batch, "negatives": "hce",
                                      "doc_max_length": args.doc_max_length, "seed": args.seed,
                                      "extra": args.train_arg, "device": "cpu"}, "models": {}}
    arms = {"hce-80-then-add": (d80, True), "hce-all-docs": (d100, False), "zero-shot": (None, False)}
    for arm, (data_dir, incremental) in arms.items():
        model = args.base if data_dir is None else work / f"model-{arm}"
        secs = train(data_dir, Path(model), args) if data_dir is not None else 0.0
        export = ensure_export(arm, model, root=work / "exports")
        idx = work / f"index-{arm}"
        build_corpus = d80 if incremental else d100
        sh("hce-serve", "index", "build", "--model", str(export), "--corpus", str(build_corpus / "corpus.jsonl"),
           "--index", str(idx), "--overwrite")
        row: dict[str, Any] = {"train_seconds": secs, "model": str(model)}
        if incremental:
            before = search_run(idx, work / "test-queries.jsonl", work / f"{arm}-before-add.trec")
            row["before_add"] = grouped_metrics(before, groups)
            row["add"] = json.loads(sh("hce-serve", "index", "add", "--index", str(idx), "--corpus",
                                       str(work / "new.jsonl")))
        run = search_run(idx, work / "test-queries.jsonl", work / f"{arm}.trec")
        row["metrics"] = grouped_metrics(run, groups)
        res["models"][arm] = row
        log.info("%s: %s", arm, row["metrics"])
    res["deletion"] = deletion_check(work / "index-hce-80-then-add", work, test, args)
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(provenance.write_result(args.out, {"benchmark": "incremental", "mode": "quick" if args.quick else "full",
                                         "data": str(src), **res}, __file__))
    return 0


def _kept(qr: Qrels, docs: list[Document]) -> list[dict]:
    ids = {d.id for d in docs}
    return [{d: g for d, g in ds.items() if d in ids} for ds in qr.values()]


def deletion_check(idx: Path, work: Path, test: Qrels, args: argparse.Namespace) -> dict[str, Any]:
    """Delete judged positives plus random documents; count deleted ids in every result list."""
    rng = random.Random(args.seed + 7)
    live = [json.loads(x)["_id"] for x in (work / "data-all" / "corpus.jsonl").read_text().splitlines()]
    positives = sorted({d for ds in test.values() for d in ds})
    victims = set(rng.sample(positives, len(positives) // 2))
    victims |= set(rng.sample(live, int(args.delete * len(live))))
    (work / "delete-ids.txt").write_text("".join(f"{d}\n" for d in sorted(victims)))
    out: dict[str, Any] = {"deleted": len(victims), "judged_positives_deleted": len(victims & set(positives))}
    out["delete"] = json.loads(sh("hce-serve", "index", "delete", "--index", str(idx), "--ids-file",
                                  str(work / "delete-ids.txt")))
    for phase in ("after_delete", "after_compact"):
        if phase == "after_compact":
            out["compact"] = json.loads(sh("hce-serve", "index", "compact", "--index", str(idx)))
        run = search_run(idx, work / "test-queries.jsonl", work / f"{phase}.trec")
        returned = sum(d in victims for hits in run.values() for d in hits)
        out[phase] = {"results": sum(len(h) for h in run.values()), "deleted_ids_returned": returned}
    return out


if __name__ == "__main__":
    sys.exit(main())
