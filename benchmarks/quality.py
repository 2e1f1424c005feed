"""Quality study (issues 10 and 30): does HCE beat plain hard-negative fine-tuning on the same data and budget?

Supervised: train on SciFact train, evaluate with exact search (nDCG@10 / R@10 / R@100 / MRR@10 through
pytrec_eval, per-query nDCG@10 and R@100 kept), from all-MiniLM-L6-v2. Issue 30's protocol: 100 train
queries (fixed, seeded, listed in the file, never a test query) are held out as the dev split; every arm
trains on the rest and is evaluated on dev, where every choice is made; ``--eval-split test`` (its own file)
is the final table. Issue 10's file (quality-<profile>.json: all of train, test split) keeps its protocol
when continued with ``--out``. Arms (ARMS below has them all), among them
  flat            in-batch + S random negatives
  mined           in-batch + S negatives from the starting encoder's ranks [10, 50)
  mined-refresh   mined, re-mined from the current encoder on hce's rebuild schedule (fresh negatives,
                  no hierarchy): separates "the tree" from "hard negatives that follow the encoder"
  hce             in-batch + S tree siblings + centroid levels, tree rebuilt every epoch
  hce-doc-level-only   ablation: hce without the centroid levels
  hce-unguarded, mined-unguarded   the other fair rule: no guard for either arm (mined from ranks 0-50)
  issue 30: percpos filters, tree-topic batches, query-aware and mixed siblings, centroid schedules, long regime
Every arm shares the profile's budget (epochs, batch, S, lengths, precision); its recipe is pinned in ARMS.
Anchors: zero-shot and BM25. The report Holm-corrects the family "every hce variant vs the best baseline"
(nDCG@10 and R@100). Unsupervised: adapt on the CISI and ArguAna corpora (pseudo-queries, no qrels).

    python -m benchmarks.quality --profile cpu --arms mined-unguarded,hce-topic --seeds 0 --resume   # dev
    python -m benchmarks.quality --profile cpu --eval-split test --arms ... --seeds 0,1,2 --resume   # final
    python -m benchmarks.quality --profile cpu --out benchmarks/results/quality-cpu.json --report     # issue 10

Results: benchmarks/results/quality-<profile>-dev.json (-final.json), rewritten after every finished (arm,
seed) run; ``--resume`` skips the runs already there, so a study can span sessions. Paired tests, plots and
the verdict are recomputed from the stored per-query scores on every save (``--report`` does only that).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import ChainMap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.gr import GR_ARMS
from benchmarks.harness import cli
from benchmarks.harness.paths import SHARED_DATA
from benchmarks.harness.provenance import stamp, write_result
from benchmarks.quality_report import markdown, report
from benchmarks.quality_spec import ARMS as SPEC_ARMS
from benchmarks.quality_spec import DEV_QUERIES, METRICS, PROFILES, QUERY_LEN, machine_facts

log = logging.getLogger("quality")

# The arms, budgets and metrics live in quality_spec (shared with benchmarks.gr); the gr arms join here, and a
# ChainMap sees an arm gr registers at run time (its dev-split choice).
ARMS: ChainMap[str, tuple[str, dict[str, Any]]] = ChainMap(GR_ARMS, SPEC_ARMS)


class StudyError(Exception):
    """A study that can't start (one line, exit 1)."""


def budget_of(args: argparse.Namespace) -> dict[str, Any]:
    """The profile's budget with the flags the user gave on top: what every arm of this file shares."""
    b = dict(PROFILES[args.profile])
    for key in b:
        if getattr(args, key, None) is not None:
            b[key] = getattr(args, key)
    if args.lr is not None:
        b["lr"] = args.lr
    if args.base_model is not None:
        b["base_model"] = args.base_model
    return b


def anchors(data_dir: Path, qlen: int, budget: dict[str, Any], device: str, split: str = "test",
            query_ids: list[str] | None = None) -> dict[str, Any]:
    """BM25 and the zero-shot base model on ``split`` (only ``query_ids`` when given), per-query nDCG@10 and
    R@100 kept for the paired tests."""
    from benchmarks.bm25 import bm25_run
    from hce_serve.formats import beir
    from hce_serve.metrics import per_query
    from hce_train.evaluate import PER_QUERY, evaluate_encoder
    from hce_train.model import HCEEncoder, use_bf16

    data = beir.load_beir(data_dir, split)
    if query_ids is not None:
        data.queries = {q: data.queries[q] for q in query_ids}
        data.qrels = {q: data.qrels[q] for q in query_ids}
    run, config = bm25_run(data.corpus, data.queries, k=100)
    per = per_query(data.qrels, run)
    bm25 = {"metrics": {m: round(sum(per[m].values()) / len(per[m]), 5) for m in METRICS}, "config": config,
            "per_query": {m: {q: round(v, 5) for q, v in per[m].items()} for m in PER_QUERY}}
    t0 = time.perf_counter()
    enc = HCEEncoder.build(budget.get("base_model"), device)
    enc.autocast_bf16 = use_bf16(budget["precision"], device)
    m = evaluate_encoder(enc, data_dir, split, qlen, budget["doc_max_length"], with_per_query=True,
                         query_ids=query_ids)
    zs = {"metrics": {k: m[k] for k in METRICS}, "per_query": m["per_query"], "bf16_eval": enc.autocast_bf16,
          "seconds": round(time.perf_counter() - t0, 1)}
    return {"bm25": bm25, "zero_shot": zs}


@dataclass(frozen=True)
class Protocol:
    """Which queries train and which evaluate, as a results file's supervised block records them."""

    holdout: tuple[str, ...]  # train-split queries kept out of training (the dev split), or none
    eval_split: str  # the qrels split every number of the file comes from
    eval_queries: tuple[str, ...] | None  # only these queries of eval_split (the dev split), or all
    also_dev: bool  # the final table: record the dev split's numbers beside the test split's


def protocol_of(block: dict[str, Any], mode: str) -> Protocol:
    """A supervised block with a ``dev`` split trains without it and evaluates on it (``eval_split`` dev) or on
    the test split (``test``, the final table). Files from before issue 30 have no ``dev``: train on all of
    train, evaluate on test, as their runs did. Unsupervised corpora have no training queries: test."""
    dev = block.get("dev") if mode == "supervised" else None
    if not dev:
        return Protocol((), "test", None, False)
    held = tuple(dev["queries"])
    if block.get("eval_split", "dev") == "dev":
        return Protocol(held, dev["from_split"], held, False)
    return Protocol(held, "test", None, True)


def train_and_eval(arm: str, seed: int, data_dir: Path, mode: str, budget: dict[str, Any], args: argparse.Namespace,
                   qlen: int, proto: Protocol | None = None) -> dict[str, Any]:
    from hce_train.config import TrainConfig
    from hce_train.evaluate import evaluate_encoder
    from hce_train.loop import fit

    proto = proto or Protocol((), "test", None, False)
    negatives, overrides = ARMS[arm]
    if negatives == "gr":  # a generative retriever: its own trainer and beam-search evaluation, the same record
        from benchmarks.gr import quality_run

        return quality_run(arm, seed, data_dir, mode, budget, args, qlen, proto)
    out = args.work / f"{data_dir.name}-{mode}-{arm}-s{seed}"
    epochs = budget["epochs"] if mode == "supervised" else budget["unsup_epochs"]
    shared = {k: budget[k] for k in ("batch_size", "negatives_per_query", "doc_max_length", "precision",
                                     "attention_dropout", "pseudo_queries", "lr", "base_model") if k in budget}
    held = {"holdout_queries": proto.holdout} if proto.holdout else {}
    cfg = TrainConfig(**{"data": str(data_dir), "out": str(out), "mode": mode, "negatives": negatives, "seed": seed,
                         "device": args.device, "epochs": epochs, "max_steps": args.max_steps,
                         "query_max_length": qlen, **shared, **overrides, **held}).resolved()
    split, qids = proto.eval_split, (list(proto.eval_queries) if proto.eval_queries is not None else None)
    curve: list[dict[str, Any]] = []
    eval_s = 0.0

    def on_epoch(epoch: int, encoder: Any) -> None:  # learning curve, same precision as the final number
        nonlocal eval_s  # fit skips the run's last epoch: that point is the final evaluation below
        t = time.perf_counter()
        m = evaluate_encoder(encoder, data_dir, split, qlen, cfg.doc_max_length, progress=False, query_ids=qids)
        curve.append({"epoch": epoch, "ndcg@10": m["ndcg@10"]})
        eval_s += time.perf_counter() - t

    facts = machine_facts()
    t0 = time.perf_counter()
    keep: dict[str, Any] = {}
    summary = fit(cfg, overwrite=True, progress=not args.no_progress, keep=keep, on_epoch=on_epoch)
    train_s = time.perf_counter() - t0 - eval_s
    t0 = time.perf_counter()
    from hce_train.model import HCEEncoder

    encoder = HCEEncoder.load(out, device=args.device_resolved)
    encoder.autocast_bf16 = summary["bf16"]
    # The final tree's corpus embeddings came from this same encoder and precision: reused, not re-encoded.
    m = evaluate_encoder(encoder, data_dir, split, qlen, cfg.doc_max_length, doc_emb=keep["corpus_embeddings"],
                         with_per_query=True, query_ids=qids)
    dev: dict[str, Any] = {}
    if proto.also_dev:  # the final table keeps each run's dev numbers too (the same corpus encode)
        d = evaluate_encoder(encoder, data_dir, cfg.split, qlen, cfg.doc_max_length,
                             doc_emb=keep["corpus_embeddings"], with_per_query=True, query_ids=list(proto.holdout))
        dev = {"dev": {"metrics": {k: d[k] for k in METRICS}, "per_query": d["per_query"]}}
    eval_s += time.perf_counter() - t0
    curve.append({"epoch": summary["epochs_done"], "ndcg@10": m["ndcg@10"]})
    config = json.loads((out / "train_config.json").read_text())
    if not args.keep_models:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return {"seed": seed, "metrics": {k: m[k] for k in METRICS}, "per_query": m["per_query"], "curve": curve,
            "steps": summary["steps"], "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
            "bf16": summary["bf16"], "machine": {**facts, "loadavg_1m_after": round(os.getloadavg()[0], 2)},
            "commit": args.code_commit, "config": config, **dev}


def load_or_start(args: argparse.Namespace, budget: dict[str, Any]) -> dict[str, Any]:
    if args.out.exists() and not (args.resume or args.fresh or args.report):
        raise StudyError(f"{args.out} exists: pass --resume to continue it or --fresh to start over")
    if args.out.exists() and not args.fresh:
        res = json.loads(args.out.read_text())
        if not args.report and res.get("budget") != budget:
            raise StudyError(f"{args.out} was made with budget {res.get('budget')}, not {budget}; "
                             "use another --out or --fresh")
        sup = res["supervised"]
        have = sup.get("eval_split", "dev") if sup.get("dev") else "test"
        if args.eval_split is not None and args.eval_split != have:
            raise StudyError(f"{args.out} evaluates on the {have} split, not {args.eval_split}; use another --out")
        if sup.get("dev") and args.dev_queries is not None and args.dev_queries != sup["dev"]["n"]:
            raise StudyError(f"{args.out} holds out {sup['dev']['n']} dev queries, not {args.dev_queries}")
        return res
    if args.report:
        raise StudyError(f"{args.out}: no results to report on")
    sup: dict[str, Any] = {"dataset": args.supervised, "train_split": "train", "arms": {}}
    n_dev = DEV_QUERIES if args.dev_queries is None else args.dev_queries
    if n_dev:
        from hce_serve.errors import HCEError
        from hce_train.data import holdout_queries

        try:
            dev = holdout_queries(args.data_root / args.supervised, "train", n_dev, args.dev_seed)
        except HCEError as e:
            raise StudyError(str(e)) from None
        sup.update(eval_split=args.eval_split or "dev",
                   dev={"from_split": "train", "n": n_dev, "seed": args.dev_seed, "never_in": ["test"], "queries": dev})
    else:  # the protocol of issue 10: all of train, evaluated on test
        sup["test_split"] = "test"
    return {"profile": args.profile, "budget": budget, "notes": [], "supervised": sup, "unsupervised": {}}


def plan(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    """(dataset, mode, arm, seed) in run order: seed-major, so every finished seed compares all arms."""
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = []
    unsup = [n for n in args.unsupervised.split(",") if n and n != "none"]
    for seed in seeds:
        out += [(args.supervised, "supervised", arm, seed) for arm in args.arms.split(",") if arm]
        out += [(name, "unsupervised", arm, seed) for name in unsup for arm in args.unsup_arms.split(",") if arm]
    return out


def default_out(args: argparse.Namespace) -> str:
    """The results name when ``--out`` is not given; issue 10's file (quality-<profile>.json) is only continued
    when named with --out."""
    tail = "" if args.dev_queries == 0 else ("-final" if args.eval_split == "test" else "-dev")
    return f"quality-{args.profile}{tail}"


def main(argv: list[str] | None = None) -> None:
    ap = cli.study_parser(__doc__, "quality-<profile>-dev; -final with --eval-split test", quick=False, whole_doc=True)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--data-root", type=Path, default=SHARED_DATA)
    ap.add_argument("--supervised", default="scifact", help="BEIR folder under --data-root with a train split")
    ap.add_argument("--base-model", default=None, help="[all-MiniLM-L6-v2]")
    ap.add_argument("--arms", default="flat,mined,mined-refresh,hce,hce-doc-level-only,hce-unguarded,mined-unguarded",
                    help=f"of {list(ARMS)}")
    ap.add_argument("--unsupervised", default="cisi,arguana", help="corpora to adapt on, or 'none'")
    ap.add_argument("--unsup-arms", default="hce,flat")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval-split", choices=("dev", "test"), default=None,
                    help="dev [default for a new file]: train on train minus the dev queries, evaluate on them; "
                         "test: the same training, evaluated on the test split (the final table only)")
    ap.add_argument("--dev-queries", type=int, default=None,
                    help=f"train queries held out as the dev split [{DEV_QUERIES}]; 0: issue 10's protocol "
                         "(all of train, test split)")
    ap.add_argument("--dev-seed", type=int, default=0, help="seed of the dev split's draw [0]")
    ap.add_argument("--epochs", type=int, default=None, help="override the profile")
    ap.add_argument("--batch-size", type=int, default=None, help="override the profile")
    ap.add_argument("--negatives-per-query", type=int, default=None, help="S; override the profile")
    ap.add_argument("--doc-max-length", type=int, default=None, help="override the profile")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None, help="override the profile")
    ap.add_argument("--pseudo-queries", choices=("span", "crop"), default=None, help="override the profile")
    ap.add_argument("--unsup-epochs", type=int, default=None, help="override the profile")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--max-steps", type=int, default=None, help="cap every run (smoke tests); not a budget key")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--resume", action="store_true", help="keep the results file and skip its finished runs")
    ap.add_argument("--fresh", action="store_true", help="start the results file over")
    ap.add_argument("--report", action="store_true", help="only recompute tests, plots and verdict from the file")
    ap.add_argument("--markdown", action="store_true", help="with --report: print the tables for RESULTS.md")
    ap.add_argument("--note", action="append", default=[], help="a remark stored in the file's notes (repeatable)")
    ap.add_argument("--gr-dev", default=None, help="a gr dev-split results file: register its choice as the arm "
                    "gr-dev-choice (what `python -m benchmarks.gr quality --dev FILE -- ...` passes)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hce-quality"))
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = cli.parse(ap, argv, default_out=default_out)
    if args.gr_dev:
        from benchmarks.gr import dev_choice_note, register_dev_choice
        from benchmarks.harness.paths import result_path

        args.note = [*args.note, dev_choice_note(register_dev_choice(result_path(args.gr_dev)))]
    if args.dev_queries is not None and args.dev_queries < 0:
        ap.error("--dev-queries must be >= 0")
    if args.dev_queries == 0 and args.eval_split == "dev":
        ap.error("--eval-split dev needs --dev-queries > 0")
    unknown = [a for a in (args.arms + "," + args.unsup_arms).split(",") if a and a not in ARMS]
    if unknown:
        ap.error(f"unknown arms {unknown}")
    try:
        run_study(args)
    except StudyError as e:
        print(f"quality: {e}", file=sys.stderr)
        sys.exit(1)


def run_study(args: argparse.Namespace) -> None:
    from hce_train.loop import pick_device

    args.device_resolved = pick_device(args.device)
    args.code_commit = stamp()["commit"]  # the code this process loaded: later commits do not change it
    budget = budget_of(args)
    res = load_or_start(args, budget)
    res["notes"] = res.get("notes", []) + [{"date": stamp()["date"], "note": n} for n in args.note]

    def save() -> None:  # the derived numbers are recomputed from the runs, then one atomic stamped write
        report(res, args.out)
        write_result(args.out, res, __file__, device=args.device_resolved)

    if args.report:
        save()
        if args.markdown:
            print(markdown(res))
        return
    for data_name, mode, arm, seed in plan(args):
        block = res["supervised"] if mode == "supervised" else res["unsupervised"].setdefault(data_name, {"arms": {}})
        data_dir = args.data_root / data_name
        qlen = QUERY_LEN.get(data_name, 64)
        proto = protocol_of(block, mode)
        if "zero_shot" not in block:
            qids = list(proto.eval_queries) if proto.eval_queries is not None else None
            block.update(anchors(data_dir, qlen, budget, args.device_resolved, proto.eval_split, qids),
                         query_max_length=qlen)
            save()
        runs = block["arms"].setdefault(arm, {"runs": []})["runs"]
        if any(r["seed"] == seed for r in runs):
            log.info("skip %s/%s seed %d: already in %s", data_name, arm, seed, args.out)
            continue
        log.info("run %s %s %s seed %d", data_name, mode, arm, seed)
        runs.append(train_and_eval(arm, seed, data_dir, mode, budget, args, qlen, proto))
        runs.sort(key=lambda r: r["seed"])
        save()
    print(json.dumps(res.get("verdict", {}), indent=2))


if __name__ == "__main__":
    main()
