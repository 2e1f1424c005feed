"""Every export checks itself: ONNX fp32 against the torch model, int8 against fp32, optionally nDCG@10.

The ONNX side runs through ``hce_serve.encoder.Encoder`` on the staged export folder (its own tokenizer.json,
padding and batching), the torch side through the model folder's Hugging Face tokenizer, so a mismatch in
either the graph or the serving path shows up as a number out of tolerance.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hce_serve.encoder import Encoder
from hce_serve.formats.card import ModelCard

log = logging.getLogger(__name__)

QUERIES = [
    "covid vaccine side effects",
    "what causes ocean acidification",
    "is coffee bad for your heart?",
    "neural network pruning methods for faster inference on mobile phones",
    "who won the 1998 world cup",
    "insulin resistance and type 2 diabetes risk in adolescents",
    "tax",
    "how does the immune system recognise bacteria that it has never encountered before",
    "best way to learn a second language as an adult",
    "effects of minimum wage increases on employment",
    "p53 mutation tumour suppression",
    "should animal testing be banned",
]
_DOCS = [
    "Vaccines train the immune system to recognise a pathogen without causing the disease.",
    "Ocean acidification is driven by the uptake of atmospheric carbon dioxide by seawater, lowering its pH.",
    "Moderate coffee consumption was not associated with higher cardiovascular mortality in a cohort of "
    "400,000 adults.",
    "Magnitude pruning removes the weights with the smallest absolute value and fine-tunes the remaining network.",
    "France beat Brazil 3-0 in the 1998 FIFA World Cup final in Saint-Denis.",
    "Obesity in adolescence strongly predicts insulin resistance, a precursor of type 2 diabetes.",
    "Income tax rates differ between countries.",
    "Pattern recognition receptors such as toll-like receptors detect conserved microbial molecules.",
    "Adults learn vocabulary faster than children but rarely reach native-like pronunciation.",
    "Meta-analyses find small or no employment effects of moderate minimum wage increases.",
    "The tumour suppressor p53 is mutated in about half of all human cancers.",
    "Animal testing remains required for many drug approvals, although alternatives such as organoids are growing.",
    "The glacier retreated two kilometres between 1950 and 2020.",
    "Sleep deprivation impairs memory consolidation in the hippocampus.",
    "A stock market index tracks the prices of a basket of shares.",
    "Nitrogen fertiliser raises crop yield but leaches into rivers.",
    "Transformers use self-attention to relate every token of a sequence to every other token.",
    "Hello.",
    "",  # an empty document: the graph must still give a finite embedding
]
_LONG = (
    "Randomised controlled trials are the reference design for estimating causal effects of medical "
    "interventions, because random assignment balances both measured and unmeasured confounders. "
    "Observational cohorts are larger and cheaper but need careful adjustment. "
)
DOCS = _DOCS + [_LONG * 2, _LONG * 12]  # a 100-token and a far-over-max_length document (truncation)


@dataclass(frozen=True)
class Tolerances:
    """Acceptance bounds of an export (issue 4, Deliver 3)."""

    fp32_max_abs: float = 1e-4  # ONNX fp32 vs torch, per embedding coordinate
    int8_mean_cos: float = 0.99  # int8 vs fp32 over the fixed texts
    int8_min_cos: float = 0.97
    ndcg_max_loss: float = 0.003  # nDCG@10 fp32 - int8 with --validate-data (0.3 points)


def torch_embeddings(model: Any, wrapper: Any, model_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    """Reference embeddings from the eager torch model and the folder's Hugging Face tokenizer."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    names = wrapper.input_names
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 16):
            batch = tok(texts[i : i + 16], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            if "token_type_ids" in names and "token_type_ids" not in batch:
                batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
            out.append(wrapper(*(batch[n] for n in names)).float().numpy())  # (b, dim)
    return np.concatenate(out)


def top10_overlap(q_a: np.ndarray, d_a: np.ndarray, q_b: np.ndarray, d_b: np.ndarray) -> float:
    """Mean share of each query's top-10 documents that two embeddings agree on."""
    k = min(10, len(d_a))
    top_a = np.argsort(-(q_a @ d_a.T), axis=1)[:, :k]  # (q, k)
    top_b = np.argsort(-(q_b @ d_b.T), axis=1)[:, :k]  # (q, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_a, top_b, strict=True)]))


def check_fp32(model: Any, wrapper: Any, model_dir: Path, export_dir: Path, card: ModelCard) -> dict[str, Any]:
    """ONNX fp32 (through Encoder) vs the torch model on the fixed texts."""
    enc = Encoder(export_dir, variant="fp32")
    ref_q = torch_embeddings(model, wrapper, model_dir, QUERIES, card.query_max_length)
    ref_d = torch_embeddings(model, wrapper, model_dir, DOCS, card.max_length)
    onnx_q, onnx_d = enc.encode_queries(QUERIES), enc.encode_documents(DOCS)
    diff = max(float(np.abs(onnx_q - ref_q).max()), float(np.abs(onnx_d - ref_d).max()))
    finite = bool(np.isfinite(onnx_q).all() and np.isfinite(onnx_d).all())
    return {"fp32_vs_torch_max_abs_diff": diff, "finite": finite, "texts": len(QUERIES) + len(DOCS)}


def check_variant(export_dir: Path, variant: str) -> dict[str, Any]:
    """A reduced-precision variant vs fp32 on the fixed texts: cosine per text and top-10 agreement."""
    ref, enc = Encoder(export_dir, variant="fp32"), Encoder(export_dir, variant=variant)
    fq, fd = ref.encode_queries(QUERIES), ref.encode_documents(DOCS)
    vq, vd = enc.encode_queries(QUERIES), enc.encode_documents(DOCS)
    cos = np.concatenate([(fq * vq).sum(1), (fd * vd).sum(1)])  # (texts,), rows are unit vectors
    return {
        f"{variant}_vs_fp32_mean_cos": float(cos.mean()),
        f"{variant}_vs_fp32_min_cos": float(cos.min()),
        f"{variant}_top10_overlap": top10_overlap(fq, fd, vq, vd),
    }


def check_data(
    export_dir: Path, data_dir: Path, variants: list[str], split: str = "test",
    max_queries: int | None = None, max_docs: int | None = None, seed: int = 0,
) -> dict[str, Any]:
    """nDCG@10 of each variant by exact search on a BEIR folder (optionally subsampled, recorded)."""
    from hce_serve.formats.beir import load_beir
    from hce_serve.metrics import evaluate

    data = load_beir(data_dir, split)
    qids, docs = subsample(data, max_queries, max_docs, seed)
    qrels = {q: data.qrels[q] for q in qids}
    ids = [d.id for d in docs]
    out: dict[str, Any] = {"data": str(data_dir), "split": split, "queries": len(qids), "docs": len(docs),
                           "subsampled": len(qids) < len(data.queries) or len(docs) < len(data.corpus)}
    for v in variants:
        enc = Encoder(export_dir, variant=v)
        q = enc.encode_queries([data.queries[i] for i in qids])  # (nq, dim)
        d = enc.encode_documents([doc.full_text for doc in docs], progress=log.isEnabledFor(logging.INFO))
        run, _ = exact_run(q, d, qids, ids)
        out[f"ndcg@10_{v}"] = evaluate(qrels, run)["ndcg@10"]
        log.info("nDCG@10 %s on %s: %.4f", v, data_dir.name, out[f"ndcg@10_{v}"])
    return out


def subsample(data: Any, max_queries: int | None, max_docs: int | None, seed: int = 0) -> tuple[list[str], list[Any]]:
    """(query ids, documents) of a BEIR set, optionally cut to ``max_queries`` random queries and
    ``max_docs`` documents, every document judged for a kept query kept."""
    rng = random.Random(seed)
    qids = sorted(data.queries)
    if max_queries is not None and len(qids) > max_queries:
        qids = sorted(rng.sample(qids, max_queries))
    docs = data.corpus
    if max_docs is not None and len(docs) > max_docs:
        judged = {d for q in qids for d in data.qrels[q]}
        keep = [d for d in docs if d.id in judged]
        rest = [d for d in docs if d.id not in judged]
        keep += rng.sample(rest, max(0, min(len(rest), max_docs - len(keep))))
        docs = keep
    return qids, docs


def exact_run(q: np.ndarray, d: np.ndarray, qids: list[str], ids: list[str], k: int = 100) -> tuple[dict, np.ndarray]:
    """Exact top-``k`` run {qid: {doc id: score}} of unit query rows against document rows, and the
    (nq, k) document rows best first."""
    from hce_serve.index.exact import topk_inner_product

    scores, rows = topk_inner_product(d, q, k)  # (nq, k) each
    run = {qid: {ids[j]: float(sc) for j, sc in zip(rr, ss, strict=True)}
           for qid, rr, ss in zip(qids, rows.tolist(), scores.tolist(), strict=True)}
    return run, rows


def failures(numbers: dict[str, Any], tol: Tolerances) -> list[str]:
    """Human-readable list of the checks out of tolerance (empty = export accepted)."""
    bad = []
    diff = numbers.get("fp32_vs_torch_max_abs_diff")
    if diff is not None and not diff <= tol.fp32_max_abs:  # `not <=` also catches NaN
        bad.append(f"fp32 vs torch max abs diff {diff:.2e} > {tol.fp32_max_abs:.0e}")
    if numbers.get("finite") is False:
        bad.append("fp32 graph gives non-finite embeddings")
    for v in ("int8", "fp16"):
        mean, low = numbers.get(f"{v}_vs_fp32_mean_cos"), numbers.get(f"{v}_vs_fp32_min_cos")
        if mean is not None and not mean >= tol.int8_mean_cos:
            bad.append(f"{v} vs fp32 mean cosine {mean:.4f} < {tol.int8_mean_cos}")
        if low is not None and not low >= tol.int8_min_cos:
            bad.append(f"{v} vs fp32 min cosine {low:.4f} < {tol.int8_min_cos}")
    data = numbers.get("data") or {}
    if "ndcg@10_int8" in data and "ndcg@10_fp32" in data:
        loss = data["ndcg@10_fp32"] - data["ndcg@10_int8"]
        if not loss <= tol.ndcg_max_loss:
            bad.append(f"int8 loses {loss:.4f} nDCG@10 vs fp32 (> {tol.ndcg_max_loss})")
    return bad


def tolerances_dict(tol: Tolerances) -> dict[str, float]:
    return asdict(tol)
