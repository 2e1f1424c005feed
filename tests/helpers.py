"""Builders for offline test fixtures: a tiny BEIR folder and a tiny random BERT with a WordPiece vocab.

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
FILLER = ["the", "a", "of", "and", "in", "to", "with", "for", "on", "is", "are", "was", "study", "results", "we", "show"]


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
