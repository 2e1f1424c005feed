"""Generative retrieval (issue 33): the paper's own comparison, a DSI/NCI-style retriever over the HCE tree.

The ``gr`` arms of ``benchmarks.quality`` (GR_ARMS, run by ``quality_run``) share the other arms' data,
budget, seeds, tree settings and dev/test protocol; their own knobs are pinned here. This script runs what
quality.py cannot:

    python -m benchmarks.gr incremental [--resume]   # documents added after training: gr vs hce (index add)
    python -m benchmarks.gr latency --model DIR       # beam search vs the dense index, 1 thread, interleaved
    python -m benchmarks.gr table --from quality-cpu-final   # gr vs hce, mined, flat, zero-shot: paired tests
    python -m benchmarks.gr quality --dev gr-dev -- --arms gr-dev-choice ...  # quality.py with the dev's choice

Results: benchmarks/results/gr-incremental.json, gr-latency.json, gr-table.json (each rewritten after every
finished unit; ``--resume`` keeps the finished ones).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("gr")

# The generative retriever's knobs, pinned per arm (GRConfig's fields); every TrainConfig knob it shares with
# the other arms (tree settings, crops, warmup, weight decay, clipping) comes from quality_spec.RECIPE and the budget.
GR_RECIPE: dict[str, Any] = {"dim": 384, "index_pairs": 8, "index_epochs": 30, "index_batch": 512,
                             "index_max_length": 64, "decoder_lr": 2e-3, "joint_decoder_lr": 1e-4,
                             "encoder_lr": None, "joint_index": 1.0, "label_smoothing": 0.0, "doc_init": "random",
                             "index_words": None, "scale": 20.0, "beam": 32, "eval_beams": (8, 32, 128),
                             "temperature": 1.0, "eval_temperatures": (1.0, 2.0, 4.0)}
GR_ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "gr": ("gr", {"gr": dict(GR_RECIPE)}),
    # Dev-split tuning (issue 33's fairness target): the encoder frozen after indexing (decoder-only joint
    # phase), and four times the indexing pairs per document (the lever that moved a 400-document probe most).
    "gr-frozen": ("gr", {"gr": {**GR_RECIPE, "encoder_lr": 0.0}}),
    "gr-pairs32": ("gr", {"gr": {**GR_RECIPE, "index_pairs": 32}}),
}
# The TrainConfig keys the generative retriever reads (the rest of a recorded config is the shared budget).
GR_USES = ("data", "split", "mode", "seed", "epochs", "max_steps", "batch_size", "query_max_length",
           "doc_max_length", "lr", "warmup_ratio", "weight_decay", "grad_clip", "precision", "attention_dropout",
           "pseudo_queries", "span_min_words", "span_max_words", "crop_drop", "holdout_queries", "branching",
           "leaf_size", "tree_balance", "kmeans_iters", "encode_batch_size", "base_model", "device")


def train_config(data_dir: Path, mode: str, seed: int, budget: dict[str, Any], qlen: int, device: str,
                 max_steps: int | None, holdout: tuple[str, ...] = (), out: str = "") -> Any:
    """The shared TrainConfig of a gr run: the quality study's pinned recipe and budget, as every arm gets."""
    from benchmarks.quality_spec import RECIPE
    from hce_train.config import TrainConfig

    epochs = budget["epochs"] if mode == "supervised" else budget["unsup_epochs"]
    shared = {k: budget[k] for k in ("batch_size", "negatives_per_query", "doc_max_length", "precision",
                                     "attention_dropout", "pseudo_queries", "lr", "base_model") if k in budget}
    held = {"holdout_queries": holdout} if holdout else {}
    # negatives: a placeholder the GR never reads (the record says "gr"); no TrainConfig knob names it.
    return TrainConfig(**{"data": str(data_dir), "out": out, "mode": mode, "negatives": "flat", "seed": seed,
                          "device": device, "epochs": epochs, "max_steps": max_steps, "query_max_length": qlen,
                          **shared, **RECIPE, **held}).resolved()


DEV_CHOICE = "gr-dev-choice"  # the arm the dev split chose, registered at run time by ``register_dev_choice``


def dev_choice(dev_file: Path) -> dict[str, Any]:
    """The gr recipe and search temperature with the best seed-mean nDCG@10 (R@100 breaks ties) among the gr
    arms of a dev-split quality file, with every candidate's numbers and the zero-shot anchor beside it: the
    choice issue 33's final runs use, made on the dev split only."""
    if not dev_file.is_file():
        raise StudyError(f"{dev_file}: no such results file (run the gr arms on the dev split first)")
    sup = json.loads(dev_file.read_text())["supervised"]
    if not sup.get("dev") or sup.get("eval_split", "dev") != "dev":
        raise StudyError(f"{dev_file}: not a dev-split quality file")
    cands: dict[str, dict[str, Any]] = {}
    for arm, block in sup.get("arms", {}).items():
        runs = block.get("runs", [])
        if arm not in GR_ARMS or arm == DEV_CHOICE or not runs:
            continue
        for t in sorted(set.intersection(*(set(r.get("temperatures") or {}) for r in runs)), key=float):
            cands[f"{arm}@T{t}"] = {"arm": arm, "temperature": float(t), "seeds": len(runs), **{
                m: round(sum(r["temperatures"][t][m] for r in runs) / len(runs), 5) for m in ("ndcg@10", "recall@100")}}
    if not cands:
        raise StudyError(f"{dev_file}: no gr arm has dev-split runs yet")
    best = max(cands.values(), key=lambda c: (c["ndcg@10"], c["recall@100"]))
    zero = sup["zero_shot"]["metrics"]["ndcg@10"]
    return {"source": dev_file.name, "arm": best["arm"], "temperature": best["temperature"],
            "dev": {k: best[k] for k in ("ndcg@10", "recall@100", "seeds")}, "zero_shot_dev_ndcg@10": zero,
            "at_least_zero_shot": best["ndcg@10"] >= zero, "candidates": cands,
            "recipe": {**GR_ARMS[best["arm"]][1]["gr"], "temperature": best["temperature"]}}


def dev_choice_note(choice: dict[str, Any]) -> str:
    """The line a study's results file keeps about the registered dev-split choice."""
    return (f"{DEV_CHOICE} = {choice['arm']} at search temperature {choice['temperature']:g}, chosen on "
            f"{choice['source']} (dev nDCG@10 {choice['dev']['ndcg@10']}, zero-shot {choice['zero_shot_dev_ndcg@10']})")


def register_dev_choice(dev_file: Path) -> dict[str, Any]:
    """Make ``gr-dev-choice`` an arm with the dev split's choice (benchmarks.quality's ARMS sees GR_ARMS)."""
    choice = dev_choice(dev_file)
    GR_ARMS[DEV_CHOICE] = ("gr", {"gr": choice["recipe"], "dev_choice": choice})
    log.info("%s: %s at temperature %g (dev nDCG@10 %.4f; zero-shot %.4f)", DEV_CHOICE, choice["arm"],
             choice["temperature"], choice["dev"]["ndcg@10"], choice["zero_shot_dev_ndcg@10"])
    return choice


def gr_config(arm: str) -> Any:
    from hce_train.gr.train import GRConfig

    knobs = dict(GR_ARMS[arm][1]["gr"])
    for key in ("eval_beams", "eval_temperatures", "index_words"):
        if knobs.get(key) is not None:
            knobs[key] = tuple(knobs[key])
    return GRConfig(**knobs)


def quality_run(arm: str, seed: int, data_dir: Path, mode: str, budget: dict[str, Any], args: argparse.Namespace,
                qlen: int, proto: Any) -> dict[str, Any]:
    """One (arm, seed) run of a gr arm for benchmarks.quality: the same record as its other arms (metrics,
    per-query scores, learning curve, steps, seconds, config), plus the beam widths and both phases."""
    from benchmarks.quality_spec import METRICS, machine_facts
    from hce_train.gr.evaluate import evaluate_gr
    from hce_train.gr.train import fit_gr

    cfg = train_config(data_dir, mode, seed, budget, qlen, args.device, args.max_steps, proto.holdout,
                       str(args.work / f"{data_dir.name}-{mode}-{arm}-s{seed}"))
    gcfg = gr_config(arm)
    split, qids = proto.eval_split, (list(proto.eval_queries) if proto.eval_queries is not None else None)
    curve: list[dict[str, Any]] = []
    eval_s = 0.0

    def on_epoch(epoch: int, model: Any) -> None:  # epoch 0: after the indexing phase alone
        nonlocal eval_s
        t = time.perf_counter()
        curve.append({"epoch": epoch, "ndcg@10": evaluate_gr(model, data_dir, split, qids)["ndcg@10"]})
        eval_s += time.perf_counter() - t

    facts = machine_facts()
    t0 = time.perf_counter()
    model, summary = fit_gr(cfg, gcfg, args.device_resolved, progress=not args.no_progress, on_epoch=on_epoch,
                            cache_dir=args.work / "gr-cache")
    wall_s = time.perf_counter() - t0 - eval_s
    train_s = wall_s + summary["cached_encode_seconds"]  # what the run costs: encodes another run cached count
    t0 = time.perf_counter()
    m = evaluate_gr(model, data_dir, split, qids, beams=gcfg.eval_beams, with_per_query=True,
                    temperatures=gcfg.eval_temperatures)
    dev: dict[str, Any] = {}
    if proto.also_dev:  # the final table keeps each run's dev numbers too
        d = evaluate_gr(model, data_dir, cfg.split, list(proto.holdout), beams=gcfg.eval_beams, with_per_query=True,
                        temperatures=gcfg.eval_temperatures)
        dev = {"dev": {"metrics": {k: d[k] for k in METRICS}, "per_query": d["per_query"], "beams": d.get("beams"),
                       "temperatures": d.get("temperatures")}}
    eval_s += time.perf_counter() - t0
    curve.append({"epoch": summary["phase_b"]["epochs"], "ndcg@10": m["ndcg@10"]})
    if args.keep_models:
        model.save(Path(cfg.out))
    config = {**cfg.to_json(), "negatives": "gr", "gr": gcfg.to_json(), "gr_uses": list(GR_USES),
              **({"dev_choice": GR_ARMS[arm][1]["dev_choice"]} if "dev_choice" in GR_ARMS[arm][1] else {})}
    return {"seed": seed, "metrics": {k: m[k] for k in METRICS}, "per_query": m["per_query"], "beams": m.get("beams"),
            "temperatures": m.get("temperatures"),
            "curve": curve, "steps": summary["phase_b"]["steps"], "indexing": summary["phase_a"],
            "joint": summary["phase_b"], "tree": summary["tree"], "tree_seconds": summary["tree_seconds"],
            "train_seconds": round(train_s, 1), "train_wall_seconds": round(wall_s, 1),
            "eval_seconds": round(eval_s, 1), "bf16": summary["bf16"],
            "machine": {**facts, "loadavg_1m_after": round(os.getloadavg()[0], 2)}, "commit": args.code_commit,
            "config": config, **dev}


# ---- documents added after training ----------------------------------------------------------------------
def hce_config(data_dir: Path, seed: int, budget: dict[str, Any], device: str, max_steps: int | None, out: Path) -> Any:
    """The quality study's ``hce`` arm (its pinned recipe and the profile's budget) on ``data_dir``."""
    from benchmarks.quality_spec import ARMS
    from hce_train.config import TrainConfig

    negatives, overrides = ARMS["hce"]
    shared = {k: budget[k] for k in ("batch_size", "negatives_per_query", "doc_max_length", "precision",
                                     "attention_dropout", "pseudo_queries", "lr", "base_model") if k in budget}
    return TrainConfig(**{"data": str(data_dir), "out": str(out), "mode": "supervised", "negatives": negatives,
                          "seed": seed, "device": device, "epochs": budget["epochs"], "max_steps": max_steps,
                          "query_max_length": 64, **shared, **overrides}).resolved()


def incremental(args: argparse.Namespace) -> None:
    """Withhold a share of the corpus, train on the rest, add the withheld documents, score the test queries
    grouped by whether their positives are new, seen or both (benchmarks.incremental's split and groups)."""
    from benchmarks.harness import provenance
    from benchmarks.incremental import (
        _doc_rows,
        _write_jsonl,
        grouped_metrics,
        query_groups,
        search_run,
        sh,
        split_corpus,
        write_folder,
    )
    from benchmarks.quality_spec import PROFILES, machine_facts
    from hce_serve.formats.beir import load_corpus, load_qrels, load_queries
    from hce_train.loop import pick_device

    device = pick_device(args.device)
    budget = {**PROFILES[args.profile], **({"base_model": args.base_model} if args.base_model else {})}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = Path(args.data)
    corpus = load_corpus(src / "corpus.jsonl")
    queries = load_queries(src / "queries.jsonl")
    qrels = {s: load_qrels(src / "qrels" / f"{s}.tsv") for s in ("train", "test")}
    seen, new = split_corpus(corpus, qrels, args.withhold, None, args.seed)
    d80 = write_folder(work / "data-seen", seen, queries, qrels)
    d100 = write_folder(work / "data-all", seen + new, queries, qrels)
    _write_jsonl(work / "new.jsonl", _doc_rows(new))
    all_ids = {d.id for d in seen + new}
    test = {q: {d: g for d, g in ds.items() if d in all_ids} for q, ds in qrels["test"].items()}
    test = {q: ds for q, ds in test.items() if ds}
    groups = query_groups(test, {d.id for d in new})
    test_q = {q: queries[q] for q in test}
    _write_jsonl(work / "test-queries.jsonl", [{"_id": q, "text": t} for q, t in test_q.items()])
    setting = {"data": str(src), "withhold": args.withhold, "seed": args.seed, "docs": len(seen) + len(new),
               "seen_docs": len(seen), "new_docs": len(new), "test_queries": {g: len(v) for g, v in groups.items()},
               "profile": args.profile, "budget": budget, "gr_arm": args.arm, "max_steps": args.max_steps}
    res: dict[str, Any] = {"benchmark": "gr-incremental", **setting, "systems": {},
                           **({"gr_dev_choice": args.dev_choice} if getattr(args, "dev_choice", None) else {})}
    if args.out.exists() and args.resume:
        old = json.loads(args.out.read_text())
        if {k: old.get(k) for k in setting} != setting:
            raise StudyError(f"{args.out} was made with another setting; use another --out or drop --resume")
        res["systems"] = old.get("systems", {})

    def save() -> None:
        provenance.write_result(args.out, res, __file__, device=device)

    for system in args.systems.split(","):
        if system in res["systems"]:
            log.info("skip %s: already in %s", system, args.out)
            continue
        log.info("system %s", system)
        facts, t0 = machine_facts(), time.perf_counter()
        if system == "zero-shot":
            row = {"metrics": grouped_metrics(_dense_run(budget, device, seen + new, test_q), groups)}
        elif system in ("gr-80-then-add", "gr-all-docs"):
            row = _gr_system(system, d80 if system == "gr-80-then-add" else d100, new, test_q, groups, budget,
                             device, args, work)
        elif system in ("hce-80-then-add", "hce-all-docs"):
            add = system == "hce-80-then-add"
            model = work / f"model-{system}"
            cfg = hce_config(d80 if add else d100, args.seed, budget, args.device, args.max_steps, model)
            from benchmarks.encoders import ensure_export
            from hce_train.loop import fit

            summary = fit(cfg, overwrite=True, progress=False)
            export = ensure_export(f"gr-incremental-{system}", model, root=work / "exports")
            idx = work / f"index-{system}"
            sh("hce-serve", "index", "build", "--model", str(export), "--corpus",
               str((d80 if add else d100) / "corpus.jsonl"), "--index", str(idx), "--overwrite")
            row = {"steps": summary["steps"], "train_seconds": summary["seconds"]}
            if add:
                row["before_add"] = grouped_metrics(search_run(idx, work / "test-queries.jsonl",
                                                               work / f"{system}-before.trec"), groups)
                row["add"] = json.loads(sh("hce-serve", "index", "add", "--index", str(idx), "--corpus",
                                           str(work / "new.jsonl")))
            row["metrics"] = grouped_metrics(search_run(idx, work / "test-queries.jsonl", work / f"{system}.trec"),
                                             groups)
        else:
            raise StudyError(f"unknown system {system!r} (zero-shot, gr-80-then-add, hce-80-then-add, gr-all-docs, "
                             "hce-all-docs)")
        res["systems"][system] = {**row, "seconds": round(time.perf_counter() - t0, 1), "machine": facts}
        log.info("%s: %s", system, row["metrics"])
        save()
    res["new_document_queries"] = {s: r["metrics"]["new"] for s, r in res["systems"].items() if "new" in r["metrics"]}
    save()
    print(json.dumps(res["new_document_queries"], indent=2))


def _dense_run(budget: dict[str, Any], device: str, docs: list[Any], queries: dict[str, str]) -> dict[str, Any]:
    """Exact search with the zero-shot encoder (torch), the quality study's anchor, over ``docs``."""
    from hce_train.evaluate import exact_topk
    from hce_train.model import HCEEncoder, use_bf16

    enc = HCEEncoder.build(budget.get("base_model"), device)
    enc.autocast_bf16 = use_bf16(budget["precision"], device)
    d = enc.encode([doc.full_text for doc in docs], budget["doc_max_length"], progress=False)
    q = enc.encode(list(queries.values()), 64, progress=False)
    scores, rows = exact_topk(q, d, 100)
    return {qid: {docs[int(r)].id: float(s) for r, s in zip(rows[i], scores[i], strict=True)}
            for i, qid in enumerate(queries)}


def _gr_system(system: str, data_dir: Path, new: list[Any], queries: dict[str, str], groups: dict[str, Any],
               budget: dict[str, Any], device: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from benchmarks.incremental import grouped_metrics
    from hce_train.gr.train import fit_gr
    from hce_train.model import HCEEncoder, use_bf16

    cfg = train_config(data_dir, "supervised", args.seed, budget, 64, args.device, args.max_steps)
    gcfg = gr_config(args.arm)
    model, summary = fit_gr(cfg, gcfg, device, cache_dir=work / "gr-cache")
    row: dict[str, Any] = {"steps": summary["phase_b"]["steps"], "indexing": summary["phase_a"],
                           "joint": summary["phase_b"], "tree": summary["tree"],
                           "train_seconds": round(summary["seconds"] + summary["cached_encode_seconds"], 1),
                           "beam": gcfg.beam, "gr": gcfg.to_json()}
    if system == "gr-80-then-add":
        row["before_add"] = grouped_metrics(model.run(queries, 100), groups)
        # The path of a new document comes from the encoder that built the tree (the zero-shot one, as DSI's
        # semantic identifiers come from a fixed BERT), its embedding by imprinting through the trained model.
        assigner = HCEEncoder.build(budget.get("base_model"), device)
        assigner.autocast_bf16 = use_bf16(budget["precision"], device)
        row["add"] = model.add([d.id for d in new], [d.full_text for d in new], assigner)
        model.save(work / "gr-model")  # all documents: what the latency study searches
        row["model"] = str(work / "gr-model")
    row["metrics"] = grouped_metrics(model.run(queries, 100), groups)
    row["beams"] = {str(b): grouped_metrics(model.run(queries, 100, b), groups) for b in gcfg.eval_beams}
    return row


# ---- latency -----------------------------------------------------------------------------------------------
def latency(args: argparse.Namespace) -> None:
    """Single-query latency at one thread, k = 100, interleaved (harness.timing.timed): the GR's beam search
    (torch encoder + decoder) and the dense index search (hce-serve Engine: ONNX encoder + HNSW), each end to
    end, encode only and search only, on the same queries."""
    import torch

    from benchmarks.encoders import base_model_path, ensure_export
    from benchmarks.harness import provenance, timing
    from benchmarks.incremental import sh
    from hce_serve.engine import Engine
    from hce_serve.formats.beir import load_beir
    from hce_train.gr.train import GenerativeRetriever

    torch.set_num_threads(1)
    data = load_beir(Path(args.data), "test")
    queries = list(data.queries.values())[: args.queries]
    model = GenerativeRetriever.load(args.model)
    if len(model.doc_ids) != len(data.corpus):
        log.warning("the GR model holds %d documents, the corpus %d", len(model.doc_ids), len(data.corpus))
    idx = Path(args.work) / "dense-index"  # the zero-shot MiniLM: a trained HCE encoder costs the same per query
    if not idx.is_dir():
        idx.parent.mkdir(parents=True, exist_ok=True)
        export = args.dense_export or ensure_export("minilm", base_model_path())
        sh("hce-serve", "index", "build", "--model", str(export), "--corpus", str(Path(args.data) / "corpus.jsonl"),
           "--index", str(idx), "--overwrite")
    eng = Engine.open(idx, threads=1, query_cache=0)
    k = 100
    q1 = [[q] for q in queries]
    x0 = model.query_states(queries[:1])  # a fixed query for the search-only loops
    v0 = eng.encoder.encode_queries(queries[:1])
    cols: dict[str, dict[str, Any]] = {
        "end_to_end": {"dense_engine": lambda i: eng.search_batch(q1[i % len(q1)], k, fields=(), mode="dense"),
                       **{f"gr_beam{b}": (lambda i, b=b: model.search(q1[i % len(q1)], k, b)) for b in args.beams}},
        "encode_only": {"dense_engine": lambda i: eng.encoder.encode_queries(q1[i % len(q1)]),
                        "gr": lambda i: model.query_states(q1[i % len(q1)])},
        "search_only": {"dense_engine": lambda i: eng.store.index.search(v0, k),
                        **{f"gr_beam{b}": (lambda i, b=b: model.search_states(x0, k, b)) for b in args.beams}},
    }
    res: dict[str, Any] = {"benchmark": "gr-latency", "threads": 1, "k": k, "queries": len(queries),
                           "n": args.n, "repeats": args.repeats, "gr_model": str(args.model),
                           "gr_docs": len(model.doc_ids), "dense_index": str(idx), "dense_docs": len(eng),
                           "dense_query_graph": eng.encoder.query_graph,
                           "beams": list(args.beams), "columns": {}}
    for col, fns in cols.items():
        res["columns"][col] = {name: t.stats() for name, t in timing.timed(fns, args.n, args.repeats).items()}
        log.info("%s: %s", col, {n: s["p50_ms"] for n, s in res["columns"][col].items()})
    e2e = res["columns"]["end_to_end"]
    res["p50_over_dense"] = {n: round(s["p50_ms"] / e2e["dense_engine"]["p50_ms"], 3) for n, s in e2e.items()}
    eng.close()
    print(provenance.write_result(args.out, res, __file__))


# ---- the table -------------------------------------------------------------------------------------------------
def table(args: argparse.Namespace) -> None:
    """gr against hce, mined, flat and the anchors, per block of each quality file: seed means and paired
    tests on nDCG@10 and R@100 (per-query scores averaged over seeds), Holm-corrected over each block."""
    from benchmarks.harness import provenance
    from benchmarks.harness.paths import result_path
    from benchmarks.quality_report import aggregate, holm, seed_mean_per_query
    from hce_serve.metrics import paired_test

    out: dict[str, Any] = {"benchmark": "gr-table", "sources": [], "blocks": {}}
    for name in args.sources:
        path = result_path(name)
        if not path.is_file():
            raise StudyError(f"{path}: no such results file")
        res = json.loads(path.read_text())
        out["sources"].append(str(path.name))
        blocks = [("supervised", res["supervised"])] + list(res.get("unsupervised", {}).items())
        for bname, block in blocks:
            arms = {a: d for a, d in block.get("arms", {}).items() if d.get("runs")}
            if args.arm not in arms:
                continue
            sup = bname == "supervised"
            split = (block.get("eval_split", "dev") if block.get("dev") else "test") if sup else "test"
            row: dict[str, Any] = {"source": path.name, "split": split,
                                   "dataset": block.get("dataset", bname), "arms": {}, "tests": {}}
            for a in (args.arm, *args.against):
                if a in arms:
                    agg = aggregate(arms[a]["runs"])
                    row["arms"][a] = {"seeds": agg["seeds"], "mean": agg["mean"], "std": agg["std"]}
            for anchor in ("zero_shot", "bm25"):
                if anchor in block:
                    row["arms"][anchor] = {"mean": block[anchor]["metrics"]}
            for metric in ("ndcg@10", "recall@100"):
                a = seed_mean_per_query(arms[args.arm]["runs"], metric)
                if a is None:
                    continue
                others = {o: seed_mean_per_query(arms[o]["runs"], metric) for o in args.against if o in arms}
                for anchor in ("zero_shot", "bm25"):
                    if metric in block.get(anchor, {}).get("per_query", {}):
                        others[anchor] = block[anchor]["per_query"][metric]
                for o, b in others.items():
                    if b is None:
                        continue
                    qids = sorted(a)
                    t = paired_test([a[q] for q in qids], [b[q] for q in qids])
                    row["tests"][f"{args.arm}-vs-{o}:{metric}"] = {
                        "diff_points": round(100 * t["diff"], 2), "p": round(t["p"], 4),
                        "ci95_points": [round(100 * t["ci_low"], 2), round(100 * t["ci_high"], 2)],
                        "queries": t["queries"]}
            adjusted = holm({k: t["p"] for k, t in row["tests"].items()})
            for key, t in row["tests"].items():
                t["p_holm"] = round(adjusted[key], 4)
            out["blocks"][f"{path.stem}:{bname}"] = row
    if not out["blocks"]:
        raise StudyError(f"no block of {args.sources} has runs of {args.arm!r}")
    out["method"] = ("paired randomization (sign flip, 100k) on per-query scores averaged over seeds; "
                     "Holm-Bonferroni within each block")
    print(provenance.write_result(args.out, out, __file__))
    if args.markdown:
        print(markdown_table(out, args.arm))


def markdown_table(out: dict[str, Any], arm: str) -> str:
    """Per block: each system's seed-mean nDCG@10 and R@100, and gr's paired difference to it (points, Holm p)."""
    lines: list[str] = []
    for name, row in out["blocks"].items():
        lines += ["", f"{row['dataset']} ({row['split']} split, {name})", "",
                  "| system | seeds | nDCG@10 | R@100 | gr − system nDCG@10 (p Holm) | gr − system R@100 (p Holm) |",
                  "|---|---|---|---|---|---|"]
        for system, agg in row["arms"].items():
            cells = []
            for metric in ("ndcg@10", "recall@100"):
                t = row["tests"].get(f"{arm}-vs-{system}:{metric}")
                cells.append(f"{t['diff_points']:+.2f} ({t['p_holm']:.3g})" if t else "")
            seeds = len(agg.get("seeds", [])) or "-"
            lines.append(f"| {system} | {seeds} | {agg['mean']['ndcg@10']:.4f} | {agg['mean']['recall@100']:.4f} | "
                         f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


class StudyError(Exception):
    """A study that can't run as asked (one line, exit 1)."""


def main(argv: list[str] | None = None) -> None:
    from benchmarks.harness.paths import SHARED_DATA, result_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    inc = sub.add_parser("incremental", help="documents added after training: gr vs hce")
    inc.add_argument("--data", default=str(SHARED_DATA / "scifact"))
    inc.add_argument("--withhold", type=float, default=0.2)
    inc.add_argument("--seed", type=int, default=0)
    inc.add_argument("--profile", default="cpu", choices=("cpu", "gpu"))
    inc.add_argument("--arm", default="gr", choices=sorted([*GR_ARMS, DEV_CHOICE]), help="the gr recipe [gr]")
    inc.add_argument("--dev", default="gr-dev", help=f"with --arm {DEV_CHOICE}: the dev-split file that chooses")
    inc.add_argument("--systems", default="zero-shot,gr-80-then-add,hce-80-then-add",
                     help="of zero-shot, gr-80-then-add, hce-80-then-add, gr-all-docs, hce-all-docs")
    inc.add_argument("--base-model", default=None)
    inc.add_argument("--max-steps", type=int, default=None, help="cap every training (smoke runs)")
    inc.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    inc.add_argument("--work", default="runs/bench/gr-incremental")
    inc.add_argument("--resume", action="store_true", help="keep the systems already in --out")
    inc.add_argument("--out", default="gr-incremental")
    lat = sub.add_parser("latency", help="beam search vs the dense index, 1 thread, interleaved")
    lat.add_argument("--model", type=Path, required=True, help="a GR model folder (gr incremental writes one)")
    lat.add_argument("--data", default=str(SHARED_DATA / "scifact"))
    lat.add_argument("--queries", type=int, default=300)
    lat.add_argument("--n", type=int, default=300, help="timed calls per system and repeat")
    lat.add_argument("--repeats", type=int, default=3)
    lat.add_argument("--beams", type=lambda s: [int(b) for b in s.split(",")], default=[8, 32, 128])
    lat.add_argument("--dense-export", type=Path, default=None,
                     help="EXPORT_DIR the dense index is built with [the zero-shot MiniLM's export]")
    lat.add_argument("--work", default="runs/bench/gr-latency")
    lat.add_argument("--out", default="gr-latency")
    qual = sub.add_parser("quality", help=f"benchmarks.quality with the arm {DEV_CHOICE} (the dev split's choice)")
    qual.add_argument("--dev", default="gr-dev", help="the dev-split quality file that chooses [gr-dev]")
    qual.add_argument("quality_args", nargs=argparse.REMAINDER, help="-- then benchmarks.quality's arguments")
    tab = sub.add_parser("table", help="gr vs hce, mined, flat and the anchors: paired tests")
    tab.add_argument("--from", dest="sources", action="append", required=True, help="a quality results file")
    tab.add_argument("--arm", default="gr")
    tab.add_argument("--against", type=lambda s: s.split(","), default=["hce", "mined", "flat"])
    tab.add_argument("--out", default="gr-table")
    tab.add_argument("--markdown", action="store_true", help="also print the tables for the results page")
    args = ap.parse_args(argv)
    if hasattr(args, "out"):  # the quality command passes --out on to benchmarks.quality
        args.out = result_path(args.out)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as harness.cli.parse sets up every study
    if args.cmd == "incremental" and not 0 < args.withhold < 1:
        ap.error("--withhold must be in (0, 1)")
    if args.cmd == "latency" and not args.model.is_dir():
        ap.error(f"--model {args.model}: no such folder")
    try:
        if args.cmd == "quality":
            dev_choice(result_path(args.dev))  # a missing or empty dev file fails here, before the study starts
            rest = args.quality_args[1:] if args.quality_args[:1] == ["--"] else args.quality_args
            # the study runs as its own process (benchmarks.quality imports this module, not the reverse); it
            # registers the arm itself from --gr-dev
            rc = subprocess.call([sys.executable, "-m", "benchmarks.quality", *rest, "--gr-dev", str(args.dev)])
            if rc:
                sys.exit(rc)
            return
        if args.cmd == "incremental" and args.arm == DEV_CHOICE:
            args.dev_choice = register_dev_choice(result_path(args.dev))
        {"incremental": incremental, "latency": latency, "table": table}[args.cmd](args)
    except StudyError as e:
        print(f"gr: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    # Run as the imported module, not as __main__: benchmarks.quality imports benchmarks.gr, and the arm that
    # ``quality --dev`` registers must be in the one GR_ARMS that quality_run reads.
    from benchmarks.gr import main as _main

    _main()
