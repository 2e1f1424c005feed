"""What a shallow query encoder costs in quality (issue 12): nDCG@10 with the full vs the distilled query side.

    python -m benchmarks.query_distill [--quick] [--datasets scifact,arguana,cisi] [--layers 2,3]
                                       [--model MODEL_DIR [--teacher-label NAME] [--no-base]] [--resume]

For each dataset and teacher (the base all-MiniLM-L6-v2, and ``--model``, e.g. an HCE-trained MODEL_DIR),
the teacher encodes the corpus once; then for each L, ``hce-train distill-query``'s ``distill`` trains the
L-layer student on that corpus (its train split's queries where it has one, else pseudo-queries only:
never the test queries), and both query encoders are evaluated against the same document embeddings by
exact search. Recorded per (dataset, teacher, L): nDCG@10 / R@100 of full and shallow queries, the paired
randomization test and bootstrap CI of the difference (per-query nDCG@10), the distillation's wall time,
held-out fidelity (on crops) and the student's cosine to the teacher on the test queries themselves.
Query lengths: 64 tokens, 256 on ArguAna (whole-argument queries); documents 256 (``--doc-max-length``).
``--quick`` uses CISI only, one epoch and L = 2. ``--resume`` keeps the file's rows and runs only the
(dataset, teacher) pairs it lacks, with the same settings (a study can span sessions, a row at a time).
``--report`` runs nothing: it prints the file's rows as the markdown table RESULTS.md shows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import cli, paths, provenance

QUERY_LEN = {"arguana": 256}
CROPS_BEFORE_OPTION = [8, 24]  # the crop words every row drew before --pseudo-words existed (rows without the key)
# What a file from before an option existed was run with: it resumes only with these settings.
LOSS_KNOBS = ("tau", "cos_weight", "kl_weight")  # DistillConfig's loss settings, options of this study
SETTINGS_BEFORE_OPTION = {"init_layers": "bottom",  # students started from the teacher's first L layers
                          "length_grouped": False,  # batches were random draws of every length
                          "tau": 0.05, "cos_weight": 1.0, "kl_weight": 1.0,  # the loss before it had options
                          "train_query_repeats": 1}  # each train query once per epoch


def teacher_dir(name: str, work: Path, qlen: int, dlen: int, base_model: str | None) -> Path:
    """A MODEL_DIR for ``distill``: the given one, or the base model saved with a card."""
    from hce_serve.formats.card import ModelCard
    from hce_train.model import HCEEncoder

    if name != "base":
        return Path(name)
    out = work / f"base-q{qlen}"
    if not (out / "hce_model.json").is_file():
        enc = HCEEncoder.build(base_model, "cpu")
        enc.save(out, ModelCard(dim=enc.dim, base_model=enc.base_model, max_length=dlen, query_max_length=qlen))
    return out


def run_one(data_dir: Path, teacher: str, layers: list[int], args: Any) -> dict[str, Any]:
    from hce_serve.formats import beir
    from hce_serve.formats.card import ModelCard
    from hce_serve.metrics import paired_test, per_query
    from hce_train.distill import DistillConfig, distill
    from hce_train.evaluate import exact_topk
    from hce_train.model import HCEEncoder, use_bf16

    qlen = QUERY_LEN.get(data_dir.name, 64)
    mdir = teacher_dir(teacher, args.work, qlen, args.doc_max_length, args.base_model)
    card = ModelCard.load(mdir)
    data = beir.load_beir(data_dir, "test")
    qids = list(data.queries)
    enc = HCEEncoder.load(mdir, "cpu")
    enc.autocast_bf16 = use_bf16("auto", "cpu")
    t0 = time.perf_counter()
    d_emb = enc.encode([d.full_text for d in data.corpus], card.max_length, 128, True, "corpus")
    encode_s = time.perf_counter() - t0

    def scores(q_emb: Any) -> dict[str, dict[str, float]]:
        s, rows = exact_topk(q_emb, d_emb, 101)
        run = {q: {data.corpus[int(r)].id: float(v) for r, v in zip(rows[i], s[i], strict=True)}
               for i, q in enumerate(qids)}
        return per_query(data.qrels, run)

    q_full = enc.encode([data.queries[q] for q in qids], qlen, 128, False)
    full = scores(q_full)
    given = {"lr": args.lr, "pseudo_per_doc": args.pseudo_per_doc, "init_layers": args.init_layers,
             "train_query_repeats": args.train_query_repeats,
             "length_grouped": args.length_grouped, **{k: getattr(args, k) for k in LOSS_KNOBS},
             "pseudo_words": tuple(args.pseudo_words) if args.pseudo_words else None}
    given = {k: v for k, v in given.items() if v is not None}
    out: dict[str, Any] = {"teacher": label(teacher, args), **_trained(mdir), "query_max_length": qlen,
                           "pseudo_words": list(given.get("pseudo_words", DistillConfig.pseudo_words)),
                           "corpus_encode_seconds": round(encode_s, 1), "full": _means(full), "students": {}}
    for n_layers in layers:
        qdir = args.work / f"{data_dir.name}-{Path(teacher).name}-L{n_layers}"
        cfg = DistillConfig(layers=n_layers, epochs=args.epochs, seed=args.seed, **given)
        summary = distill(mdir, qdir, cfg, data=data_dir, overwrite=True, doc_emb=d_emb)
        student = HCEEncoder.load(qdir, "cpu")
        student.autocast_bf16 = enc.autocast_bf16
        q_shallow = student.encode([data.queries[q] for q in qids], qlen, 128, False)
        shallow = scores(q_shallow)
        test = paired_test([shallow["ndcg@10"][q] for q in data.qrels], [full["ndcg@10"][q] for q in data.qrels])
        out["students"][f"L{n_layers}"] = {
            **_means(shallow), "loss_points": round(100 * (_means(full)["ndcg@10"] - _means(shallow)["ndcg@10"]), 2),
            "p": round(test["p"], 4), "ci95_points": [round(100 * test["ci_low"], 2), round(100 * test["ci_high"], 2)],
            "distill_seconds": summary["seconds"], "steps": summary["steps"], "heldout": summary["heldout"],
            "init_from": summary["init_from"],  # the teacher layers the student started from
            "crops_per_doc": summary["crops_per_doc"],  # resolved (--pseudo-per-doc 0: automatic)
            "test_query_cosine": query_cosine(q_full, q_shallow),  # fidelity on the real queries (never trained on)
        }
    out["measured"] = measured(provenance.stamp())
    return out


def query_cosine(full: Any, shallow: Any) -> dict[str, float]:
    """Mean / 5th-percentile cosine between the teacher's and the student's embedding of each test query:
    the held-out fidelity measured on crops says nothing about queries unlike the crops (ArguAna's)."""
    import numpy as np

    a = full / np.linalg.norm(full, axis=1, keepdims=True)
    b = shallow / np.linalg.norm(shallow, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    return {"mean": round(float(cos.mean()), 4), "p5": round(float(np.percentile(cos, 5)), 4)}


def measured(stamp: dict[str, Any]) -> dict[str, Any]:
    """When, by which commit and on which CPU a row was measured (rows of one file may span sessions)."""
    return {"date": stamp.get("date"), "commit": stamp.get("commit"), "isa": (stamp.get("machine") or {}).get("isa")}


def label(teacher: str, args: Any) -> str:
    return "base" if teacher == "base" else (args.teacher_label or Path(teacher).name)


def _trained(mdir: Path) -> dict[str, Any]:
    """How an HCE-trained teacher was trained (its train_config.json), for the row."""
    cfg_file = mdir / "train_config.json"
    if not cfg_file.is_file():
        return {}
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    keys = ("mode", "negatives", "seed", "epochs", "batch_size", "negatives_per_query", "doc_max_length")
    return {"teacher_training": {"data": Path(str(cfg.get("data", ""))).name, **{k: cfg.get(k) for k in keys}}}


def previous(args: Any, settings: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """With ``--resume``: the file's rows, after checking that it was run with the same settings."""
    if not args.resume or not args.out.is_file():
        return {}
    old = {**SETTINGS_BEFORE_OPTION, **json.loads(args.out.read_text(encoding="utf-8"))}
    if old.get("pseudo_per_doc") is None:  # a file from before the automatic default recorded null for 8
        old["pseudo_per_doc"] = 8
    changed = [k for k, v in settings.items() if old.get(k) != v]
    if changed:
        raise SystemExit(f"query_distill: --resume: {args.out} was run with other {', '.join(changed)}; "
                         "pass the same settings or another --out")
    rows = old.get("results", {})
    for r in (r for dataset in rows.values() for r in dataset):
        r.setdefault("measured", measured(old))  # a row from before rows were stamped: the file's stamp
        r.setdefault("pseudo_words", CROPS_BEFORE_OPTION)
    return rows


def markdown(res: dict[str, Any]) -> str:
    """The file's rows as a markdown table, one line per (dataset, teacher, L); loss ≤ 1.0 point is the target."""
    lines = ["| data | teacher | crop words | full nDCG@10 | L | shallow nDCG@10 | loss (pts) | 95 % CI | p "
             "| held-out cosine / top-10 overlap | test-query cosine | distill | ≤ 1.0 pt? |", "|" + "---|" * 13]
    for name, rows in res.get("results", {}).items():
        for r in rows:
            for key, st in r["students"].items():
                held = st.get("heldout") or {}
                lo, hi = st["ci95_points"]
                words = "–".join(map(str, r.get("pseudo_words", CROPS_BEFORE_OPTION)))
                lines.append(f"| {name} | {r['teacher']} | {words} | {r['full']['ndcg@10']:.4f} | {_depth(key, st)} | "
                             f"{st['ndcg@10']:.4f} "
                             f"| **{st['loss_points']:.2f}** | [{lo:+.2f}, {hi:+.2f}] | {st['p']:.2f} "
                             f"| {held.get('cosine_mean', float('nan')):.2f} / "
                             f"{held.get('top10_overlap', float('nan')):.2f} "
                             f"| {_test_cos(st)} "
                             f"| {st['distill_seconds']:,.0f} s, {st['steps']} steps | "
                             f"{'yes' if st['loss_points'] <= 1.0 else 'no'} |")
    return "\n".join(lines)


def _depth(key: str, student: dict[str, Any]) -> str:
    """"3", or "3 (0,4,5)" when the student did not start from the teacher's bottom layers."""
    kept = student.get("init_from")  # rows from before the option started from the bottom layers
    bottom = kept is None or kept == list(range(len(kept)))
    return key[1:] if bottom else f"{key[1:]} ({','.join(map(str, kept))})"


def _test_cos(student: dict[str, Any]) -> str:
    cos = student.get("test_query_cosine")  # rows from before it was measured have none
    return f"{cos['mean']:.2f} (p5 {cos['p5']:.2f})" if cos else "–"


def _means(per: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: round(sum(v.values()) / len(v), 5) for m, v in per.items() if m in ("ndcg@10", "recall@100")}


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "query-distill")
    ap.add_argument("--data-root", type=Path, default=paths.SHARED_DATA)
    ap.add_argument("--datasets", default=None, help="[scifact,arguana,cisi; cisi with --quick]")
    ap.add_argument("--layers", default=None, help="[2,3; 2 with --quick]")
    ap.add_argument("--model", default=None, help="also distil this MODEL_DIR (e.g. an HCE-trained model)")
    ap.add_argument("--teacher-label", default=None, help="the --model rows' name in the file [its folder name]")
    ap.add_argument("--resume", action="store_true", help="keep the file's rows; run only the missing ones")
    ap.add_argument("--report", action="store_true", help="run nothing; print the file's rows as a markdown table")
    ap.add_argument("--no-base", action="store_true", help="distil only the --model teacher, not the base model")
    ap.add_argument("--epochs", type=int, default=None, help="[3; 1 with --quick]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=None, help="distillation peak learning rate [DistillConfig's]")
    ap.add_argument("--pseudo-per-doc", type=int, default=None,
                    help="pseudo-queries per document and epoch [DistillConfig's: 0, enough to fill max_pseudo, 8 to "
                         "16]")
    ap.add_argument("--train-query-repeats", type=int, default=None,
                    help="each train-split query this many times per epoch [DistillConfig's]")
    ap.add_argument("--pseudo-words", default=None, metavar="MIN,MAX",
                    help="words per pseudo-query crop [DistillConfig's 8,24]; e.g. 8,192 for ArguAna's long queries")
    ap.add_argument("--init-layers", default=None, help="teacher layers each student starts from: bottom, ends, top "
                    "[DistillConfig's]")
    ap.add_argument("--length-grouped", action=argparse.BooleanOptionalAction, default=None,
                    help="batch queries of similar length together [DistillConfig's]")
    for knob in LOSS_KNOBS:
        ap.add_argument(f"--{knob.replace('_', '-')}", type=float, default=None,
                        help="distillation loss setting [DistillConfig's]")
    ap.add_argument("--base-model", default=None, help="the base teacher [all-MiniLM-L6-v2]")
    ap.add_argument("--doc-max-length", type=int, default=256)
    ap.add_argument("--work", type=Path, default=paths.CACHE / "query-distill")
    args = cli.parse(ap, argv)
    if args.no_base and not args.model:
        ap.error("--no-base needs --model (a teacher to distil)")  # a usage error: exit 2
    from hce_serve.errors import ConfigError
    from hce_train.config import INIT_RULES, DistillConfig

    if args.pseudo_words is not None:
        raw = args.pseudo_words
        try:
            args.pseudo_words = [int(x) for x in raw.split(",")]
            DistillConfig(pseudo_words=tuple(args.pseudo_words))  # two values, 1 <= MIN <= MAX
        except (ValueError, ConfigError):
            ap.error(f"--pseudo-words {raw}: expected MIN,MAX words with 1 <= MIN <= MAX")
    if args.init_layers not in (None, *INIT_RULES):
        ap.error(f"--init-layers {args.init_layers}: expected one of {', '.join(INIT_RULES)} (a rule: --layers may "
                 "list several L)")
    args.init_layers = args.init_layers or DistillConfig.init_layers  # recorded resolved: defaults may change
    if args.length_grouped is None:
        args.length_grouped = DistillConfig.length_grouped
    if args.train_query_repeats is None:  # recorded resolved
        args.train_query_repeats = DistillConfig.train_query_repeats
    if args.pseudo_per_doc is None:  # recorded resolved (0: automatic)
        args.pseudo_per_doc = DistillConfig.pseudo_per_doc
    for knob in LOSS_KNOBS:  # recorded resolved
        setattr(args, knob, getattr(DistillConfig, knob) if getattr(args, knob) is None else getattr(args, knob))
    try:
        DistillConfig(train_query_repeats=args.train_query_repeats, **{k: getattr(args, k) for k in LOSS_KNOBS})
    except ConfigError as e:
        ap.error(str(e))
    if args.report:
        if not args.out.is_file():
            raise SystemExit(f"query_distill: {args.out}: no results to report on")
        print(markdown(json.loads(args.out.read_text(encoding="utf-8"))))
        return 0
    datasets = (args.datasets or ("cisi" if args.quick else "scifact,arguana,cisi")).split(",")
    layers = [int(x) for x in (args.layers or ("2" if args.quick else "2,3")).split(",")]
    args.epochs = args.epochs or (1 if args.quick else 3)
    args.work.mkdir(parents=True, exist_ok=True)
    teachers = ([] if args.no_base else ["base"]) + ([args.model] if args.model else [])
    settings = {"benchmark": "query-distill", "mode": "quick" if args.quick else "full", "epochs": args.epochs,
                "layers": layers, "lr": args.lr, "pseudo_per_doc": args.pseudo_per_doc,
                "pseudo_words": args.pseudo_words, "init_layers": args.init_layers,
                "length_grouped": args.length_grouped,  # None: DistillConfig's; init_layers, length_grouped resolved
                "train_query_repeats": args.train_query_repeats,
                **{k: getattr(args, k) for k in LOSS_KNOBS}}
    results: dict[str, list[dict[str, Any]]] = previous(args, settings)
    for name in datasets:
        rows = results.setdefault(name, [])
        for t in teachers:
            if any(r["teacher"] == label(t, args) for r in rows):
                continue  # --resume: already measured
            rows.append(run_one(args.data_root / name, t, layers, args))
            provenance.write_result(args.out, {**settings, "results": results}, __file__)  # after every row
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
