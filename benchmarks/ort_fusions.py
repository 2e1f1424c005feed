"""Which onnxruntime graph rewrites pay on this CPU: the export's graphs in bare sessions with ORT's defaults
beside the same sessions as hce-serve opens them (``defaults.ORT_CPU_DISABLED_OPTIMIZERS`` skipped).

    python -m benchmarks.ort_fusions [--quick] [--export DIR]

For the int8 and fp32 graphs, at 1 and 2 threads, interleaved (``timing.timed``): single-query p50 over the
test queries (tokenized beforehand: the session alone is timed), and documents per second in batches of 32
cut at ``--doc-tokens``. Fidelity: the largest difference between the two sessions' embeddings and each
int8 session's cosine to the fp32 graph on ``--fidelity-docs`` documents. A per-op profile (ORT's profiler,
kernel microseconds per query by op type) of the int8 graph at 1 thread says where the time goes.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.encoders import base_model_path, cosine_stats, ensure_export, pad_encodings
from benchmarks.harness import cli, paths, provenance, timing
from hce_serve import defaults

log = logging.getLogger(__name__)
BATCH = 32


def session(graph: Path, threads: int, disabled: Sequence[str], profile: str | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    return ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))


def input_names(sess: Any) -> frozenset[str]:
    return frozenset(i.name for i in sess.get_inputs())


def feed(names: frozenset[str], ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs (``names``, read once per session, outside any timed call)."""
    f = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in f.items() if k in names}


def batches(tok: Any, texts: list[str], max_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, mask) int64 (b, L) batches of ``BATCH`` texts, each padded to its longest (texts in order)."""
    tok.enable_truncation(max_length=max_length)
    return [pad_encodings(tok.encode_batch(texts[s : s + BATCH])) for s in range(0, len(texts), BATCH)]


def embed(sess: Any, bs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    (name,) = [o.name for o in sess.get_outputs() if o.name == "sentence_embedding"]
    names = input_names(sess)
    e = np.concatenate([sess.run([name], feed(names, i, m))[0] for i, m in bs])  # (n, dim)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def profile(graph: Path, disabled: Sequence[str], queries: list[np.ndarray], tmp: str) -> dict[str, float]:
    """Kernel microseconds per query by op type, from ORT's profiler (1 thread)."""
    sess = session(graph, 1, disabled, profile=str(Path(tmp) / "prof"))
    names = input_names(sess)
    for ids in queries:
        sess.run(None, feed(names, ids, np.ones_like(ids)))
    events = json.loads(Path(sess.end_profiling()).read_text())
    by: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by[e["args"]["op_name"]] += e["dur"]
    return {op: round(us / len(queries), 1) for op, us in by.most_common()}


def timed_configs(graph: Path, threads: int, configs: dict[str, list[str]], queries: list[np.ndarray],
                  docs: list[tuple[np.ndarray, np.ndarray]], args: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """Per config: single-query statistics (interleaved with the other configs) and documents per second."""
    sess = {c: session(graph, threads, d) for c, d in configs.items()}
    names = {c: input_names(s) for c, s in sess.items()}

    def one(c: str, i: int) -> Any:
        ids = queries[i % len(queries)]
        return sess[c].run(None, feed(names[c], ids, np.ones_like(ids)))

    timings = timing.timed({c: (lambda i, c=c: one(c, i)) for c in sess}, args.n, args.repeats, warmup=30)
    docs = docs[:4]  # 4 batches of 32
    n_docs = sum(len(ids) for ids, _ in docs)
    return ({c: t.stats() for c, t in timings.items()},
            {c: timing.rate(lambda s=s: embed(s, docs), n_docs, args.repeats) for c, s in sess.items()})


def run(export_dir: Path, data_dir: Path, args: Any) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from hce_serve.formats.beir import load_beir
    from hce_serve.formats.card import ModelCard

    card = ModelCard.load(export_dir)
    graphs = {v: export_dir / card.onnx["files"][v] for v in ("int8", "fp32")}
    data = load_beir(data_dir, split="test")
    texts = list(data.queries.values())[: args.n]
    tok = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=defaults.QUERY_MAX_LENGTH)
    queries = [np.asarray([tok.encode(t).ids], np.int64) for t in texts]  # (1, L) each
    docs = batches(tok, [d.full_text for d in data.corpus[: args.fidelity_docs]], args.doc_tokens)
    disabled = list(args.disabled)
    configs = {"ort_default": [], "hce": disabled}
    res: dict[str, Any] = {"disabled_optimizers": disabled, "queries": len(queries), "doc_tokens": args.doc_tokens,
                           "query_tokens_median": float(np.median([q.shape[1] for q in queries])),
                           "query_p50_ms": {}, "query": {}, "docs_per_s": {}, "fidelity": {}, "speedup": {}}
    for variant, graph in graphs.items():
        for threads in (1, 2):
            key = f"{variant}_{threads}t"
            res["query"][key], res["docs_per_s"][key] = timed_configs(graph, threads, configs, queries, docs, args)
            p = res["query_p50_ms"][key] = {c: t["p50_ms"] for c, t in res["query"][key].items()}
            rate = res["docs_per_s"][key]
            res["speedup"][key] = {"query": round(p["ort_default"] / p["hce"], 3),
                                   "docs": round(rate["hce"] / rate["ort_default"], 3)}
            log.info("%s: query p50 %s, docs/s %s", key, p, rate)
    ref = embed(session(graphs["fp32"], 2, []), docs)
    for variant, graph in graphs.items():
        a, b = embed(session(graph, 2, []), docs), embed(session(graph, 2, disabled), docs)
        res["fidelity"][variant] = {"max_abs_diff_between_configs": float(np.abs(a - b).max()),
                                    "cos_between_configs": cosine_stats(a, b), "docs": len(a)}
        if variant == "int8":
            res["fidelity"][variant]["cos_to_fp32"] = {"ort_default": cosine_stats(a, ref), "hce": cosine_stats(b, ref)}
    with tempfile.TemporaryDirectory(prefix="hce-ort-prof-") as tmp:
        res["profile_int8_1t_us_per_query"] = {c: profile(graphs["int8"], d, queries[:200], tmp)
                                               for c, d in configs.items()}
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "ort-fusions")
    ap.add_argument("--export", type=Path, default=None, help="EXPORT_DIR [all-MiniLM-L6-v2, exported and cached]")
    ap.add_argument("--data", type=Path, default=paths.SHARED_DATA / "scifact", help="BEIR folder [SciFact]")
    ap.add_argument("--n", type=int, default=None, help="timed queries per repeat [300; 60 quick]")
    ap.add_argument("--repeats", type=int, default=None, help="[3; 1 quick]")
    ap.add_argument("--doc-tokens", type=int, default=256)
    ap.add_argument("--fidelity-docs", type=int, default=None, help="[1000; 64 quick]")
    ap.add_argument("--disabled", type=lambda s: [x for x in s.split(",") if x],
                    default=list(defaults.ORT_CPU_DISABLED_OPTIMIZERS), help="rewrites to skip [%(default)s]")
    args = cli.parse(ap, argv)
    args.n = args.n or (60 if args.quick else 300)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.fidelity_docs = args.fidelity_docs or (64 if args.quick else 1000)
    export_dir = args.export or ensure_export("minilm", base_model_path())
    result = {"benchmark": "ort_fusions", "mode": "quick" if args.quick else "full", "export": str(export_dir),
              "data": str(args.data), **run(export_dir, args.data, args)}
    print(provenance.write_result(args.out, result, __file__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
