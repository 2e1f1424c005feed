"""Builders for offline test fixtures: a tiny BEIR folder and a tiny random BERT with a WordPiece vocab;
and the check every benchmark's results file gets in the smoke tests.

Nothing here touches the network or a model hub; everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = {
    "protein": "protein enzyme amino fold binding receptor kinase peptide",
    "climate": "climate carbon warming ocean ice temperature emission glacier",
    "vaccine": "vaccine immune antibody virus dose infection trial response",
    "brain": "brain neuron cortex memory synapse signal cognitive sleep",
    "cancer": "cancer tumor cell growth chemotherapy metastasis gene mutation",
    "diet": "diet obesity sugar insulin fat weight glucose metabolism",
    "market": "market price trade stock inflation bank interest currency",
    "soil": "soil crop plant nitrogen farm yield root water",
}
FILLER = ["the", "a", "of", "and", "in", "to", "with", "for", "on", "is", "are", "was", "study", "results", "we",
          "show"]


def vocab_words() -> list[str]:
    words = set(FILLER)
    for t, kw in TOPICS.items():
        words.add(t)
        words.update(kw.split())
    return sorted(words)


def write_tiny_beir(root: Path, docs_per_topic: int = 8, seed: int = 0) -> Path:
    """A BEIR folder: 8 topics x ``docs_per_topic`` docs, 3 train + 2 test queries per topic."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    corpus, queries, train, test = [], [], [], []
    for t, kw in TOPICS.items():
        words = kw.split()
        for j in range(docs_per_topic):
            body = [rng.choice(words) if rng.random() < 0.6 else rng.choice(FILLER) for _ in range(rng.randint(12, 30))]
            corpus.append({"_id": f"{t}-{j}", "title": f"{t} {words[j % len(words)]}", "text": " ".join(body)})
        for k in range(5):
            qid = f"q-{t}-{k}"
            anchor = words[k % len(words)]
            queries.append({"_id": qid, "text": f"{t} {anchor} {rng.choice(words)}"})
            target = f"{t}-{k % docs_per_topic}"
            (train if k < 3 else test).append((qid, target))
    with open(root / "corpus.jsonl", "w") as fh:
        fh.writelines(json.dumps(d) + "\n" for d in corpus)
    with open(root / "queries.jsonl", "w") as fh:
        fh.writelines(json.dumps(q) + "\n" for q in queries)
    for name, pairs in (("train", train), ("test", test)):
        with open(root / "qrels" / f"{name}.tsv", "w") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            fh.writelines(f"{q}\t{d}\t1\n" for q, d in pairs)
    return root


def write_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """A random-initialised BertModel + fast WordPiece tokenizer saved with ``save_pretrained``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list("-.,'")
    vocab = special + letters + ["##" + c for c in letters] + vocab_words()
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=128)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    BertModel(cfg).eval().save_pretrained(folder)
    return folder


def with_stand_in_query_graph(export: Path, out: Path) -> Path:
    """A copy of ``export`` whose card lists stand-in shallow query graphs: its fp32 graph as the int8 query
    graph and its int8 graph as the fp32 one. The numbers differ from the document graph's, so which graph
    encoded a query shows in its vector (distilling a real one is tests/test_distill_query.py's job)."""
    import shutil

    shutil.copytree(export, out)
    shutil.copy(out / "model.onnx", out / "query_model_int8.onnx")
    shutil.copy(out / "model_int8.onnx", out / "query_model.onnx")
    card = json.loads((out / "hce_model.json").read_text())
    card["onnx"].update(query_files={"fp32": "query_model.onnx", "int8": "query_model_int8.onnx"},
                        query_encoder={"layers": 1, "source": "stand-in"})
    (out / "hce_model.json").write_text(json.dumps(card))
    return out


def read_result(path: Path, script: str) -> dict:
    """A benchmark's results file, checked to name the script that wrote it and to carry the stamp."""
    from benchmarks.harness import provenance

    res = json.loads(path.read_text())
    assert res["script"] == script and all(k in res for k in provenance.STAMP_KEYS)
    return res
