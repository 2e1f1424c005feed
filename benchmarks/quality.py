"""Quality study (issue 3): HCE against its baselines, trained by the same code on the same budget.

Supervised: train on SciFact train, evaluate on SciFact test (exact search, nDCG@10 / R@10 / R@100 /
MRR@10 through pytrec_eval), starting from all-MiniLM-L6-v2, arms ``flat`` (in-batch + random
negatives), ``mined`` (start-encoder ranks 10-50), ``hce`` (tree siblings + centroid levels) and optional
ablations, one run per seed, mean and std. Anchors: zero-shot and BM25 (bm25s). Unsupervised: adapt on
the ArguAna and CISI corpora (pseudo-queries, no qrels) and compare with zero-shot and BM25.

The full study is meant for a GPU (DESIGN §8 calibration: 8 epochs, batch 64, 3 seeds):

    python benchmarks/quality.py --seeds 0,1,2 --device cuda

A reduced CPU run must say so in its label; it cannot be compared with the GPU targets:

    nice python benchmarks/quality.py --seeds 0 --max-steps 12 --batch-size 16 --doc-max-length 128 \
        --unsupervised none --label "CPU reduced budget"

Results go to benchmarks/results/quality-scifact.json, rewritten after every finished run so a long study
that is cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, SHARED_DATA, stamp  # noqa: E402

from hce_serve import beir  # noqa: E402
from hce_serve.metrics import evaluate  # noqa: E402

log = logging.getLogger("quality")

# name -> (negatives, config overrides). Every arm shares the budget flags given on the command line.
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "flat": ("flat", {}),
    "mined": ("mined", {}),
    "hce": ("hce", {}),
    "hce-doc-level-only": ("hce", {"level_weights": (0.0,)}),  # ablation: siblings without centroid levels
    "hce-raw-centroids": ("hce", {"normalize_centroids": False}),  # ablation: the prototype's centroid logits
}
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


def bm25_metrics(data_dir: Path, split: str) -> tuple[dict[str, float], dict[str, Any]]:
    """BM25 (bm25s, Lucene variant, k1 1.2, b 0.75, English stop words, Snowball stemmer if installed)."""
    import bm25s

    try:
        import Stemmer

        stem = Stemmer.Stemmer("english").stemWords
    except ImportError:
        stem = None
    data = beir.load_beir(data_dir, split)
    ids = [d.id for d in data.corpus]
    retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    retriever.index(bm25s.tokenize([d.full_text for d in data.corpus], stopwords="en", stemmer=stem,
                                   show_progress=False), show_progress=False)
    qids = list(data.queries)
    qtok = bm25s.tokenize([data.queries[q] for q in qids], stopwords="en", stemmer=stem, show_progress=False)
    rows, scores = retriever.retrieve(qtok, k=min(101, len(ids)), show_progress=False, n_threads=1)
    run = {q: {ids[i]: float(s) for i, s in zip(r, sc, strict=True) if s > 0}
           for q, r, sc in zip(qids, rows.tolist(), scores.tolist(), strict=True)}
    return evaluate(data.qrels, run), {"library": "bm25s", "k1": 1.2, "b": 0.75, "stemmer": bool(stem)}


def zero_shot(data_dir: Path, split: str, qlen: int, dlen: int, device: str) -> dict[str, Any]:
    from hce_train.evaluate import evaluate_encoder
    from hce_train.model import HCEEncoder

    t0 = time.perf_counter()
    enc = HCEEncoder.build(None, device)
    metrics = evaluate_encoder(enc, data_dir, split, qlen, dlen, progress=True)
    return {"metrics": metrics, "seconds": round(time.perf_counter() - t0, 1)}


def train_and_eval(arm: str, seed: int, data_dir: Path, mode: str, args: argparse.Namespace, work: Path,
                   qlen: int) -> dict[str, Any]:
    from hce_train.config import TrainConfig
    from hce_train.evaluate import evaluate_model_dir
    from hce_train.loop import fit

    negatives, overrides = ARMS[arm]
    out = work / f"{data_dir.name}-{mode}-{arm}-s{seed}"
    budget = {k: v for k, v in {"epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
                                "lr": args.lr}.items() if v is not None}
    cfg = TrainConfig(data=str(data_dir), out=str(out), mode=mode, negatives=negatives, seed=seed,
                      device=args.device, doc_max_length=args.doc_max_length, query_max_length=qlen,
                      **budget, **overrides).resolved()
    t0 = time.perf_counter()
    keep: dict[str, Any] = {}
    summary = fit(cfg, overwrite=True, progress=True, keep=keep)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # The final encoder's corpus embeddings (the saved tree's) are reused: one corpus encode less per run.
    metrics = evaluate_model_dir(out, data_dir, "test", device=args.device_resolved,
                                 doc_emb=keep["corpus_embeddings"])
    return {"seed": seed, "metrics": {k: metrics[k] for k in METRICS}, "steps": summary["steps"],
            "train_seconds": round(train_s, 1), "eval_seconds": round(time.perf_counter() - t0, 1),
            "config": json.loads((out / "train_config.json").read_text())}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "per_seed": runs, "mean": {}, "std": {}}
    for m in METRICS:
        vals = [r["metrics"][m] for r in runs]
        out["mean"][m] = round(statistics.fmean(vals), 5)
        out["std"][m] = round(statistics.stdev(vals), 5) if len(vals) > 1 else 0.0
    out["wall_seconds"] = round(sum(r["train_seconds"] + r["eval_seconds"] for r in runs), 1)
    out["config"] = runs[0]["config"]
    return out


def verdict(res: dict[str, Any]) -> dict[str, Any]:
    """Targets from issue 3, checked on whatever was measured (never on missing numbers)."""
    v: dict[str, Any] = {}
    arms = res["supervised"]["arms"]
    if "hce" in arms and ({"flat", "mined"} & arms.keys()):
        hce = arms["hce"]["mean"]["ndcg@10"]
        best = max(arms[a]["mean"]["ndcg@10"] for a in ("flat", "mined") if a in arms)
        v["scifact"] = {"hce_ndcg@10": hce, "best_baseline_ndcg@10": best, "hce_ge_0.80": hce >= 0.80,
                        "hce_ge_best_plus_1pt": hce >= best + 0.01}
    for name, d in res["unsupervised"].items():
        if "hce" in d and "zero_shot" in d:
            hce, zs = d["hce"]["mean"]["ndcg@10"], d["zero_shot"]["metrics"]["ndcg@10"]
            v[name] = {"hce_ndcg@10": hce, "zero_shot": zs, "ge_zero_shot_plus_3pt": hce >= zs + 0.03,
                       "above_bm25": hce > d["bm25"]["metrics"]["ndcg@10"] if "bm25" in d else None}
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=SHARED_DATA)
    ap.add_argument("--arms", default="flat,mined,hce", help=f"comma list of {list(ARMS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=None, help="same step budget for every arm")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--doc-max-length", type=int, default=256)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--unsupervised", default="arguana,cisi", help="corpora to adapt on, or 'none'")
    ap.add_argument("--unsup-epochs", type=int, default=1)
    ap.add_argument("--no-anchors", action="store_true", help="skip BM25 and zero-shot (e.g. arms split across processes)")
    ap.add_argument("--label", default="full study")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hce-quality"))
    ap.add_argument("--out", type=Path, default=RESULTS / "quality-scifact.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    from hce_train.loop import pick_device

    args.device_resolved = pick_device(args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arms {unknown}")
    res: dict[str, Any] = {
        **stamp(args.device_resolved), "label": args.label,
        "budget": {"epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
                   "doc_max_length": args.doc_max_length, "query_max_length": 64, "seeds": seeds},
        "anchors_from_issue": {"zero_shot": 0.644, "inbatch_best": 0.744, "mined_best": 0.787, "bm25": 0.686},
        "supervised": {"dataset": "scifact", "train_split": "train", "test_split": "test", "arms": {}},
        "unsupervised": {},
    }

    def save() -> None:
        res["verdict"] = verdict(res)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")

    scifact = args.data_root / "scifact"
    sup = res["supervised"]
    if not args.no_anchors:
        sup["bm25"] = dict(zip(("metrics", "config"), bm25_metrics(scifact, "test"), strict=True))
        sup["zero_shot"] = zero_shot(scifact, "test", 64, args.doc_max_length, args.device_resolved)
        save()
    for arm in arms:
        runs = []
        for seed in seeds:
            runs.append(train_and_eval(arm, seed, scifact, "supervised", args, args.work, 64))
            sup["arms"][arm] = {**aggregate(runs), "device": args.device_resolved}
            save()
    for name in [n for n in args.unsupervised.split(",") if n and n != "none"]:
        data = args.data_root / name
        qlen = 256 if name == "arguana" else 64  # DESIGN §8: ArguAna queries are whole arguments
        d: dict[str, Any] = {"query_max_length": qlen}
        res["unsupervised"][name] = d
        d["bm25"] = dict(zip(("metrics", "config"), bm25_metrics(data, "test"), strict=True))
        d["zero_shot"] = zero_shot(data, "test", qlen, args.doc_max_length, args.device_resolved)
        save()
        saved_epochs, args.epochs = args.epochs, args.unsup_epochs
        runs = [train_and_eval("hce", seed, data, "unsupervised", args, args.work, qlen) for seed in seeds]
        args.epochs = saved_epochs
        d["hce"] = {**aggregate(runs), "device": args.device_resolved}
        save()
    print(json.dumps(res["verdict"], indent=2))


if __name__ == "__main__":
    main()
