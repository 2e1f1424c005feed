"""Hybrid search (issue 29): BM25 and the dense encoder fused at query time, through the product's Engine.

For every collection an index folder is built by ``Engine.build`` (with its lexical part), and each judged
query is searched in ``dense`` and ``lexical`` mode to ``--depth``; fusion settings are then swept on those
two lists with the Engine's own ``fuse`` (so a sweep costs no re-search), and the chosen default is checked
by searching in ``hybrid`` mode through the Engine.

Research hygiene: the default (method, dense weight alpha) is chosen on DEV queries only: SciFact's train
queries (the base encoder never trained on them), and for the collections without training queries a seeded
half of their test queries. The final table is on the other half (SciFact: its test split) and is not used
for any choice. The rule: among settings whose worst dev gain over the better single mode is >= -1.0 point,
the highest mean gain; the issue's targets are then checked on the held-out queries.

Also: the lexical side against the bm25s reference (``benchmarks.bm25``, all test queries), paired
randomization tests of hybrid vs each single mode, search latency per mode at the collection's size and at
``--scale`` synthetic documents (1 thread, interleaved, query cache off), build time and disk size with and
without the lexical part.

    python -m benchmarks.hybrid                                  # five collections, base MiniLM int8
    python -m benchmarks.hybrid --quick                          # SciFact only, no 1M run
    python -m benchmarks.hybrid --model mined=runs/mined-model --datasets scifact --out hybrid-trained
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bm25 import bm25_run
from benchmarks.encoders import base_model_path, ensure_export
from benchmarks.harness.cli import parse, study_parser
from benchmarks.harness.figures import pyplot, save_figure
from benchmarks.harness.paths import CACHE, SHARED_DATA, plot_path
from benchmarks.harness.provenance import stamp, write_result
from benchmarks.hybrid_scale import mode_latency
from hce_serve import Engine
from hce_serve.formats.beir import load_beir
from hce_serve.lexical.fusion import FUSIONS, fuse
from hce_serve.metrics import paired_test, per_query

log = logging.getLogger(__name__)

DATASETS = ("scifact", "cisi", "npl", "medline", "arguana")
ALPHAS = tuple(round(a, 2) for a in np.arange(0.1, 0.95, 0.1))
DEPTH = 100
WORST_ALLOWED = -1.0  # points: a default may never lose more than this to the better single mode (dev)
TARGET_GAIN = {"scifact": 2.0, "cisi": 2.0, "npl": 2.0}


def split_queries(name: str, data_dir: Path, scifact_dev: list[str] | None = None
                  ) -> tuple[Any, list[str], Any, list[str]]:
    """(dev data, dev qids, test data, test qids): SciFact's train/test (``scifact_dev``: only those train queries,
    e.g. the ones a fine-tuned model never saw); elsewhere a seeded half of test."""
    if name == "scifact":
        dev, test = load_beir(data_dir, "train"), load_beir(data_dir, "test")
        dev_q = sorted(dev.queries) if scifact_dev is None else sorted(set(scifact_dev) & dev.queries.keys())
        return dev, dev_q, test, sorted(test.queries)
    test = load_beir(data_dir, "test")
    qids = sorted(test.queries)
    random.Random(f"hybrid-{name}").shuffle(qids)
    half = len(qids) // 2
    return test, sorted(qids[:half]), test, sorted(qids[half:])


def ranked_run(lists: dict[str, list[tuple[str, float]]]) -> dict[str, dict[str, float]]:
    """Rank-derived scores, so trec_eval's ordering is exactly the list's (ties in a score can't reorder)."""
    return {q: {d: float(len(hits) - r) for r, (d, _) in enumerate(hits)} for q, hits in lists.items()}


def side_lists(engine: Engine, queries: dict[str, str], qids: list[str], mode: str, depth: int
               ) -> dict[str, list[tuple[str, float]]]:
    hits = engine.search_batch([queries[q] for q in qids], k=depth, mode=mode, fields=())
    return {q: [(h.id, h.score) for h in row] for q, row in zip(qids, hits, strict=True)}


def fused_lists(dense: dict, lexical: dict, method: str, alpha: float, k: int) -> dict[str, list[tuple[str, float]]]:
    return {q: [(f.id, f.score) for f in fuse(dense[q], lexical[q], method, alpha, k)] for q in dense}


def scores(qrels: dict, lists: dict) -> dict[str, dict[str, float]]:
    return per_query({q: qrels[q] for q in lists if q in qrels}, ranked_run(lists))


def mean(per: dict[str, float]) -> float:
    return round(100 * statistics.fmean(per.values()), 2) if per else 0.0


def sweep(qrels: dict, dense: dict, lexical: dict, depth: int) -> dict[str, Any]:
    """nDCG@10 (points) of each single mode and every (method, alpha) on one query set."""
    out: dict[str, Any] = {"dense": mean(scores(qrels, dense)["ndcg@10"]),
                           "lexical": mean(scores(qrels, lexical)["ndcg@10"]), "fused": {}}
    for method in FUSIONS:
        for alpha in ALPHAS:
            lists = fused_lists(dense, lexical, method, alpha, depth)
            out["fused"][f"{method}@{alpha}"] = mean(scores(qrels, lists)["ndcg@10"])
    return out


def choose(dev: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The default from the dev sweeps of every collection (rule in the module docstring)."""
    table = {}
    for setting in next(iter(dev.values()))["fused"]:
        gains = {c: round(s["fused"][setting] - max(s["dense"], s["lexical"]), 2) for c, s in dev.items()}
        table[setting] = {"gains": gains, "worst": min(gains.values()),
                          "mean": round(statistics.fmean(gains.values()), 3)}
    robust = [s for s, t in table.items() if t["worst"] >= WORST_ALLOWED]
    pool = robust or list(table)
    best = max(pool,
               key=lambda s: (table[s]["mean"], table[s]["worst"]) if robust else (table[s]["worst"], table[s]["mean"]))
    method, alpha = best.split("@")
    return {"method": method, "alpha": float(alpha), "setting": best, "robust_settings": len(robust),
            "rule": f"max mean dev gain among settings whose worst dev gain >= {WORST_ALLOWED}", "table": table}


def held_out(qrels: dict, dense: dict, lexical: dict, hybrid: dict) -> dict[str, Any]:
    """Final metrics per mode, and paired tests of hybrid against each single mode."""
    per = {m: scores(qrels, lists) for m, lists in (("dense", dense), ("lexical", lexical), ("hybrid", hybrid))}
    out: dict[str, Any] = {m: {"ndcg@10": mean(p["ndcg@10"]), "recall@100": mean(p["recall@100"])}
                           for m, p in per.items()}
    qids = sorted(per["hybrid"]["ndcg@10"])
    for side in ("dense", "lexical"):
        t = paired_test([per["hybrid"]["ndcg@10"][q] for q in qids], [per[side]["ndcg@10"][q] for q in qids])
        out[f"hybrid_vs_{side}"] = {k: round(v * 100, 2) if k in ("diff", "ci_low", "ci_high") else v
                                    for k, v in t.items()}
    best = max(out["dense"]["ndcg@10"], out["lexical"]["ndcg@10"])
    out["gain_over_best_single"] = round(out["hybrid"]["ndcg@10"] - best, 2)
    out["queries"] = len(qids)
    return out


def folder_mib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 2)


def build(export: Path, data_dir: Path, folder: Path, lexical: bool) -> dict[str, Any]:
    """Build (or reuse: a rerun measures the searches, not the encoder again) an index folder of the corpus."""
    marker = folder.parent / f".{folder.name}-build.json"
    if marker.is_file() and (folder / "manifest.json").is_file():
        return {**json.loads(marker.read_text()), "reused": True}
    t = time.perf_counter()
    Engine.build(export, data_dir / "corpus.jsonl", folder, overwrite=True, lexical=lexical)
    out = {"seconds": round(time.perf_counter() - t, 2), "disk_mib": folder_mib(folder)}
    marker.write_text(json.dumps(out))
    return out


def run_collection(name: str, export: Path, work: Path, args: Any) -> dict[str, Any]:
    data_dir = SHARED_DATA / name
    dev_data, dev_q, test_data, test_q = split_queries(name, data_dir, args.scifact_dev)
    folder = work / name
    res: dict[str, Any] = {"documents": len(test_data.corpus), "dev_queries": len(dev_q), "test_queries": len(test_q)}
    res["build"] = {"lexical": build(export, data_dir, folder, True)}
    if args.build_both and name == "scifact":  # build cost with and without the lexical part
        res["build"]["dense_only"] = build(export, data_dir, work / f"{name}-dense-only", False)
    with Engine.open(folder, query_cache=0, threads=1) as engine:
        res["index"] = {k: v for k, v in engine.stats().items() if k in ("live", "lexical")}
        d_dev, l_dev = (side_lists(engine, dev_data.queries, dev_q, m, args.depth) for m in ("dense", "lexical"))
        res["dev"] = sweep(dev_data.qrels, d_dev, l_dev, args.depth)
        d_test, l_test = (side_lists(engine, test_data.queries, test_q, m, args.depth) for m in ("dense", "lexical"))
        res["_test_lists"] = (d_test, l_test)
        all_q = sorted(test_data.queries)
        lex_all = side_lists(engine, test_data.queries, all_q, "lexical", args.depth)
        ref, cfg = bm25_run(test_data.corpus, test_data.queries, k=args.depth, k1=1.5, b=0.75)  # bm25s' defaults
        res["lexical_vs_reference"] = {"hce": mean(per_query(test_data.qrels, ranked_run(lex_all))["ndcg@10"]),
                                       "bm25s": mean(per_query(test_data.qrels, ref)["ndcg@10"]), "reference": cfg,
                                       "queries": len(all_q)}
        r = res["lexical_vs_reference"]
        r["diff"] = round(r["hce"] - r["bm25s"], 2)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = study_parser(__doc__, "hybrid")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--model", default=None, help="NAME=DIR: a MODEL_DIR or EXPORT_DIR instead of the base MiniLM")
    ap.add_argument("--depth", type=int, default=DEPTH, help="depth each side retrieves before fusion")
    ap.add_argument("--scale", type=int, default=1_000_000,
                    help="synthetic documents for the latency at scale (0: skip)")
    ap.add_argument("--latency-queries", type=int, default=1000)
    ap.add_argument("--build-both", action=argparse.BooleanOptionalAction, default=True,
                    help="also build SciFact without the lexical part (build time and size with and without)")
    ap.add_argument("--scifact-dev-from", type=Path, default=None,
                    help="a quality-study results file: SciFact's dev queries are its held-out ones (a model trained "
                         "on the rest of train is tuned only on queries it never saw)")
    args = parse(ap, argv)
    args.scifact_dev = None
    if args.scifact_dev_from is not None:
        args.scifact_dev = json.loads(args.scifact_dev_from.read_text())["supervised"]["dev"]["queries"]
    datasets = ["scifact"] if args.quick else [d.strip() for d in args.datasets.split(",") if d.strip()]
    if args.quick:
        args.scale, args.latency_queries = 0, 200
    label, src = (args.model.split("=", 1) if args.model else ("minilm", str(base_model_path())))
    export = ensure_export(label, src, quantize=True)
    work = CACHE / "hybrid" / label
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    per = {name: run_collection(name, export, work, args) for name in datasets}
    default = choose({n: r["dev"] for n, r in per.items()})
    settings = {"fusion": default["method"], "alpha": default["alpha"], "depth": args.depth}
    for name, r in per.items():
        d_test, l_test = r.pop("_test_lists")
        hyb = fused_lists(d_test, l_test, default["method"], default["alpha"], args.depth)
        _, _, test_data, test_q = split_queries(name, SHARED_DATA / name, args.scifact_dev)
        r["test"] = held_out(test_data.qrels, d_test, l_test, hyb)
        with Engine.open(work / name, query_cache=0, threads=1) as engine:
            # the product path gives the sweep's ranking: hybrid mode through the Engine on a sample of queries
            # (the same batch for all three modes: a batch's padding moves int8 query vectors by ~1e-3, enough to
            # swap near-ties, so lists from another batching are compared by overlap only)
            sample = test_q[:50]
            texts = [test_data.queries[q] for q in sample]
            got = engine.search_batch(texts, k=10, mode="hybrid", fields=(), **settings)
            sides = [side_lists(engine, test_data.queries, sample, m, args.depth) for m in ("dense", "lexical")]
            want = fused_lists(*sides, default["method"], default["alpha"], 10)
            r["engine_agrees"] = all([h.id for h in row] == [d for d, _ in want[q]]
                                     for q, row in zip(sample, got, strict=True))
            r["top10_overlap_with_sweep"] = round(statistics.fmean(
                len({h.id for h in row} & {d for d, _ in hyb[q][:10]}) / 10
                for q, row in zip(sample, got, strict=True)), 4)
            if name == "scifact" and args.latency_queries:
                texts = [test_data.queries[q] for q in test_q]
                r["latency"] = mode_latency(engine, texts, args.latency_queries, settings)
    result: dict[str, Any] = {"model": label, "depth": args.depth, "default": default, "collections": per,
                              "targets": targets(per), "wall_minutes": round((time.perf_counter() - t0) / 60, 1),
                              **stamp()}
    if args.scale:
        from benchmarks.hybrid_scale import scale_latency

        result["scale"] = scale_latency(export, args.scale, work / "scale", args.latency_queries, settings)
    out = write_result(args.out, result, __file__, " ".join(sys.argv[1:]) or "(defaults)")
    plot(result, out)
    print(markdown(result))
    return 0


def targets(per: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {}
    for name, r in per.items():
        test = r["test"]
        t[name] = {"gain": test["gain_over_best_single"], "within_1pt": test["gain_over_best_single"] >= -1.0,
                   "lexical_within_0.5": abs(r["lexical_vs_reference"]["diff"]) <= 0.5}
        if name in TARGET_GAIN:
            t[name]["gain_target_met"] = test["gain_over_best_single"] >= TARGET_GAIN[name]
        if name in ("scifact", "npl"):
            better = "dense" if test["dense"]["ndcg@10"] >= test["lexical"]["ndcg@10"] else "lexical"
            t[name]["p_vs_better_single"] = test[f"hybrid_vs_{better}"]["p"]
    return t


def plot(result: dict[str, Any], out: Path) -> None:
    plt = pyplot()
    names = list(result["collections"])
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 3.4))
    w = 0.27
    for j, mode in enumerate(("dense", "lexical", "hybrid")):
        ax.bar([i + (j - 1) * w for i in range(len(names))],
               [result["collections"][n]["test"][mode]["ndcg@10"] for n in names], w, label=mode)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("nDCG@10 (held-out queries)")
    d = result["default"]
    ax.set_title(f"hybrid default: {d['method']}, alpha {d['alpha']} ({result['model']})")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, plot_path(out, "ndcg"))


def markdown(result: dict[str, Any]) -> str:
    d = result["default"]
    lines = [f"default: {d['method']} alpha {d['alpha']} (chosen on dev: {d['rule']})", "",
             "| collection | dense | lexical | hybrid | gain | p vs dense | p vs lexical | lexical vs bm25s |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in result["collections"].items():
        t = r["test"]
        lines.append(f"| {n} | {t['dense']['ndcg@10']} | {t['lexical']['ndcg@10']} | {t['hybrid']['ndcg@10']} | "
                     f"{t['gain_over_best_single']:+} | {t['hybrid_vs_dense']['p']:.4f} | "
                     f"{t['hybrid_vs_lexical']['p']:.4f} "
                     f"| {r['lexical_vs_reference']['diff']:+} |")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("HCE_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
