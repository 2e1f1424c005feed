"""Which int8 recipe keeps retrieval quality: full-corpus nDCG@10 of fp32 vs several int8 graphs of MiniLM.

    python -m benchmarks.int8_study [--quick] [--datasets scifact,arguana] [--work DIR]

Exports the model once with the current code (``hce-export onnx --quantize`` defaults), then quantises
the same fp32 graph with ``hce_export.quantize`` into one folder per alternative recipe:

- ``default``  what ``hce-export onnx --quantize`` writes on this machine (the ISA's default recipe);
- ``ffn-fp32`` per-channel s8 weights, 7-bit on AVX2, GELU-fed FFN output projections kept fp32;
- ``all``      the same with every weight matmul quantised;
- ``u8u8``     per-channel *u8* weights (onnxruntime's U8U8 kernel: no int16 saturation on AVX2, 8-bit
               range), FFN output projections kept fp32;
- ``early``    ``ffn-fp32`` with the FFN output projections kept fp32 only in layers 0-2 (the sensitive
               ones) and quantised in the later layers (``hce-export onnx --fp32-ffn-layers 0,1,2``).

``--variants`` picks among them (default: all five). A recipe that is the default (``ffn-fp32`` on AVX2,
``all`` on AVX-512 VNNI) is the export's own graph, measured once as ``default``; ``default_is`` names it.

Every graph goes through the BEIR step (``encoders.beir_exact``: documents 256 tokens; queries 64 on
SciFact and 256 on ArguAna, whose queries are whole arguments). Also recorded: cosine of each int8
document embedding to its fp32 one, top-10 overlap with fp32, and the single-query encode p50 at 1 thread,
all graphs timed interleaved. ``--quick`` subsamples 100 queries / 1,500 documents (recorded).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.encoders import base_model_path, beir_exact, is_export
from benchmarks.harness import cli, figures, paths, provenance, timing

log = logging.getLogger(__name__)
QUERY = "what is the effect of vitamin d on bone density in adults"
QUERY_LEN = {"arguana": 256}  # others 64
EARLY_LAYERS = (0, 1, 2)  # the ``early`` recipe's fp32 FFN output projections
VARIANTS = ("default", "ffn-fp32", "all", "u8u8", "early")


def build_graphs(model: Path, work: Path, names: Sequence[str]) -> tuple[dict[str, Path], dict[str, dict]]:
    """({graph name: EXPORT_DIR serving it}, {recipe: its quantisation record}). ``fp32`` and ``default``
    are the export itself; every other recipe is its own export folder: the int8 graph quantised from
    the same fp32 graph, the tokenizer, and a card naming that graph."""
    from hce_export.api import export
    from hce_export.quantize import detect_isa, quantize, settings_for
    from hce_serve.formats.card import ModelCard

    exp = work / "export"
    if not is_export(exp):
        export(model, exp, quantize=True, overwrite=True)
    card = ModelCard.load(exp)
    kept = settings_for(detect_isa(), keep_ffn_out=True)
    alternatives = {
        "ffn-fp32": kept,
        "all": dataclasses.replace(kept, keep_ffn_out=False),
        "u8u8": dataclasses.replace(kept, reduce_range=False, weight_type="quint8"),
        "early": dataclasses.replace(kept, fp32_layers=EARLY_LAYERS),
    }
    folders, recipes = {"fp32": exp, "default": exp}, {"default": card.onnx["quantization"]}
    for name in names:
        if name == "default":
            continue
        out = work / f"int8-{name}"
        want = alternatives[name].as_dict()
        if want == {k: card.onnx["quantization"].get(k) for k in want}:  # the default recipe: the export's graph
            folders[name], recipes[name] = exp, card.onnx["quantization"]
            continue
        made = is_export(out) and ModelCard.load(out).onnx["exported_at"] == card.onnx["exported_at"]
        if made:  # a record without a setting (older code) had it at its default, None
            have = ModelCard.load(out).onnx["quantization"]
            made = {k: have.get(k) for k in want} == want
        if not made:  # absent, quantised from an earlier export, or by another recipe under this name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            info = quantize(exp / card.onnx["files"]["fp32"], out / "model_int8.onnx", alternatives[name])
            shutil.copy2(exp / "tokenizer.json", out / "tokenizer.json")
            card.replace(onnx={**card.onnx, "files": {"int8": "model_int8.onnx"}, "quantization": info}).save(out)
        folders[name] = out
        recipes[name] = ModelCard.load(out).onnx["quantization"]
    return folders, recipes


def encoder(folder: Path, name: str, threads: int, qlen: int | None = None):  # noqa: ANN201 - an Encoder
    from hce_serve.encoder import Encoder

    return Encoder(folder, variant="fp32" if name == "fp32" else "int8", threads=threads, query_max_length=qlen)


def study(data_dir: Path, folders: dict[str, Path], quick: bool) -> dict:
    from hce_export.validate import subsample
    from hce_serve.formats.beir import load_beir

    data = load_beir(data_dir, "test")
    qids, docs = subsample(data, 100, 1500) if quick else subsample(data, None, None)
    qlen = QUERY_LEN.get(data_dir.name, 64)
    out: dict = {"queries": len(qids), "docs": len(docs), "subsampled": quick, "query_max_length": qlen,
                 "variants": {}}
    runs = {}
    for name, folder in folders.items():
        enc = encoder(folder, name, 2, qlen)
        out["doc_max_length"] = enc.card.max_length
        runs[name] = r = beir_exact(enc, data, qids, docs, cache_key=f"{data_dir.name}-{'quick' if quick else 'full'}")
        row = {**r.metrics, "encode_s": round(r.encode_seconds, 1) if r.encode_seconds else "cached"}
        if name != "fp32":
            base = runs["fp32"]
            cos = np.einsum("ij,ij->i", r.d, base.d)  # (nd,) unit rows
            overlap = np.mean([len(set(a) & set(b)) / 10
                               for a, b in zip(r.rows[:, :10], base.rows[:, :10], strict=True)])
            row.update(ndcg10_loss_points=round(100 * (base.metrics["ndcg@10"] - r.metrics["ndcg@10"]), 3),
                       doc_cos_mean=round(float(cos.mean()), 5), doc_cos_min=round(float(cos.min()), 5),
                       top10_overlap=round(float(overlap), 4))
        out["variants"][name] = row
        log.info("%s %s: %s", data_dir.name, name, row)
    return out


def query_latency(folders: dict[str, Path], n: int) -> dict:
    """Single-query encode at 1 thread, every graph timed interleaved (20 rounds)."""
    encs = {name: encoder(folder, name, 1) for name, folder in folders.items()}
    timings = timing.timed({name: (lambda i, e=e: e.encode_queries([QUERY])) for name, e in encs.items()},
                          n, warmup=30, rounds=20)
    res = {name: t.stats() for name, t in timings.items()}
    for name in res:
        res[name]["speedup_vs_fp32"] = round(res["fp32"]["p50_ms"] / res[name]["p50_ms"], 3)
        log.info("query 1t %s: %s", name, res[name])
    return res


def plot(result: dict, out: Path) -> None:
    plt = figures.pyplot()
    sets = list(result["datasets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.4), squeeze=False)
    for ax, ds in zip(axes[0], sets, strict=True):
        v = result["datasets"][ds]["variants"]
        names = list(v)
        ax.bar(names, [v[n]["ndcg@10"] for n in names], color=["#555"] + ["#4a7"] * (len(names) - 1))
        ax.set_ylim(min(v[n]["ndcg@10"] for n in names) - 0.02, max(v[n]["ndcg@10"] for n in names) + 0.01)
        ax.set_title(f"{ds} (nDCG@10, {'subsample' if result['quick'] else 'full corpus'})")
    figures.save_figure(fig, out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "int8-study")
    ap.add_argument("--model", type=Path, default=None, help="MODEL_DIR to export [all-MiniLM-L6-v2]")
    ap.add_argument("--datasets", default="scifact,arguana", help="BEIR folders or names under ../shared/data")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="recipes to compare [%(default)s]")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hce-int8-study"), help="exports of each recipe")
    ap.add_argument("--latency-n", type=int, default=1000)
    ap.add_argument("--skip-latency", action="store_true")
    args = cli.parse(ap, argv)
    logging.getLogger("hce_serve").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.variants.split(",") if n]
    if unknown := sorted(set(names) - set(VARIANTS)):
        ap.error(f"--variants: unknown recipe(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    folders, recipes = build_graphs(args.model or base_model_path(), args.work, names)
    twin = next((n for n in names if n != "default" and folders[n] == folders["fp32"]), None)
    if twin and "default" in names:  # the default recipe under its own name: measured once, as ``default``
        names.remove(twin)
    folders = {n: folders[n] for n in ["fp32", *names]}
    result = {"study": "int8", "quick": args.quick, "model": str(args.model or "all-MiniLM-L6-v2"),
              "recipes": {n: recipes[n] for n in names}, "datasets": {},
              "default_is": twin}
    for ds in [d for d in args.datasets.split(",") if d]:
        path = Path(ds) if Path(ds).is_dir() else paths.SHARED_DATA / ds
        result["datasets"][path.name] = study(path, folders, args.quick)
    if not args.skip_latency:
        result["query_latency_1t"] = query_latency(folders, args.latency_n)
    path = provenance.write_result(args.out, result, __file__)
    plot(result, paths.plot_path(path, "ndcg"))
    print(json.dumps({ds: {n: (v["ndcg@10"], v.get("ndcg10_loss_points")) for n, v in r["variants"].items()}
                      for ds, r in result["datasets"].items()}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
