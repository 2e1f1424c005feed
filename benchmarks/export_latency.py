"""Export benchmark: how long ``hce-export onnx --quantize`` takes, and the query latency and document
throughput of torch eager, ORT fp32 and ORT int8 (the graphs it writes) on this CPU.

    python -m benchmarks.export_latency [--quick] [--export DIR]

Single-query (~11 tokens) encode latency at 1 and 2 threads, the three systems timed interleaved
(tokenization included; median of the per-repeat percentiles; calling-thread CPU time beside it), and
docs/s for 128-token documents at each thread count. The retrieval quality of each int8 recipe is
``int8_study``'s job (full corpora).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.encoders import base_model_path
from benchmarks.harness import cli, paths, provenance, timing

log = logging.getLogger(__name__)
QUERY = "what is the effect of vitamin d on bone density in adults"
QUERY_MAX_LENGTH = 64


def docs_of_length(tok: Any, corpus: Path, n: int, tokens: int) -> list[str]:
    """The first ``n`` documents of at least ``tokens`` tokens, each cut at its ``tokens``-th token (special
    tokens counted), so every system encodes the same ``tokens``-token inputs."""
    from hce_serve.formats.beir import iter_corpus

    out = []
    for d in iter_corpus(corpus):
        enc = tok.encode(d.full_text)
        if len(enc.ids) >= tokens:  # offsets[i] = (start, end) characters of token i; [CLS] is token 0
            out.append(d.full_text[: enc.offsets[tokens - 2][1]])
        if len(out) == n:
            break
    return out


def systems(model_dir: Path, export_dir: Path, threads: int, docs: list[str],
            doc_tokens: int) -> dict[str, tuple[Callable, Callable]]:
    """{system: (encode one query, encode the documents)} at ``threads`` threads."""
    import torch

    from hce_serve.encoder import Encoder
    from hce_train.model import HCEEncoder

    torch.set_num_threads(threads)
    tq = HCEEncoder.load(model_dir)
    out: dict[str, tuple[Callable, Callable]] = {
        "torch": (lambda i: tq.encode([QUERY], QUERY_MAX_LENGTH, progress=False),
                  lambda: tq.encode(docs, doc_tokens, progress=False))}
    for variant in ("fp32", "int8"):
        e = Encoder(export_dir, variant=variant, threads=threads, query_max_length=QUERY_MAX_LENGTH)
        out[variant] = (lambda i, e=e: e.encode_queries([QUERY]), lambda e=e: e.encode_documents(docs))
    return out


def speed(model_dir: Path, export_dir: Path, data_dir: Path, quick: bool, doc_tokens: int,
          n: int | None = None) -> dict[str, Any]:
    from tokenizers import Tokenizer

    warmup, n, repeats = (10, n or 100, 3) if quick else (30, n or 500, 5)
    tok = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    docs = docs_of_length(tok, data_dir / "corpus.jsonl", 64, doc_tokens)
    res: dict[str, Any] = {"query": QUERY, "query_tokens": len(tok.encode(QUERY).ids), "docs": len(docs),
                           "docs_tokens_mean": round(float(np.mean([len(tok.encode(d).ids) for d in docs])), 1),
                           "query_latency": {}, "docs_per_s": {}}
    for threads in (1, 2):
        fns = systems(model_dir, export_dir, threads, docs, doc_tokens)
        timings = timing.timed({k: q for k, (q, _) in fns.items()}, n, repeats, warmup)
        res["query_latency"][f"{threads}t"] = {k: t.stats() for k, t in timings.items()}
        res["docs_per_s"][f"{threads}t"] = {k: timing.rate(d, len(docs), 2 if quick else 3)
                                            for k, (_, d) in fns.items()}
        log.info("%dt: query p50 %s, docs/s %s", threads, {k: t.stats()["p50_ms"] for k, t in timings.items()},
                 res["docs_per_s"][f"{threads}t"])
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "export")
    ap.add_argument("--model", type=Path, default=None, help="MODEL_DIR [all-MiniLM-L6-v2]")
    ap.add_argument("--export", type=Path, default=None, help="reuse this EXPORT_DIR of --model (else exported now)")
    ap.add_argument("--data", type=Path, default=paths.SHARED_DATA / "scifact", help="where the documents come from")
    ap.add_argument("--doc-tokens", type=int, default=128, help="length of the timed documents")
    ap.add_argument("--n", type=int, default=None, help="timed queries per system and repeat [100 quick, 500]")
    args = cli.parse(ap, argv)
    from hce_serve.formats.card import ModelCard

    model_dir = args.model or base_model_path()
    work = None
    export_dir, export_info = args.export, {"reused": str(args.export)}
    try:
        if export_dir is None:
            from hce_export.api import export

            work = Path(tempfile.mkdtemp(prefix="hce-bench-export-"))
            export_dir = work / "export"
            t0 = time.perf_counter()
            done = export(model_dir, export_dir, quantize=True)
            export_info = {"seconds": round(time.perf_counter() - t0, 1), "validation": done["validation"]}
        result = {"benchmark": "export_latency", "mode": "quick" if args.quick else "full", "model": str(model_dir),
                  "export": export_info, "quantization": ModelCard.load(export_dir).onnx.get("quantization"),
                  "speed": speed(model_dir, export_dir, args.data, args.quick, args.doc_tokens, args.n)}
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    print(provenance.write_result(args.out, result, __file__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
