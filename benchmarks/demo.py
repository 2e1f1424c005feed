"""Print the demo's evaluation table: zero-shot vs HCE fine-tune, both through the int8 ONNX + HNSW path."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(base_eval: str, hce_eval: str, model_card: str, export_card: str) -> None:
    base = json.loads(Path(base_eval).read_text())
    hce = json.loads(Path(hce_eval).read_text())
    metrics = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
    print()
    print("SciFact test (300 claims), int8 ONNX encoder + HNSW index, this CPU")
    print(f"{'metric':<12}{'zero-shot':>12}{'HCE (demo)':>12}{'delta':>9}")
    for m in metrics:
        b, h = base.get(m), hce.get(m)
        if b is None or h is None:
            continue
        print(f"{m:<12}{b:>12.4f}{h:>12.4f}{(h - b) * 100:>+8.1f}p")
    tree = json.loads(Path(model_card).read_text()).get("tree") or {}
    if tree:
        print(f"tree: {tree.get('levels')} levels, {tree.get('nodes')} nodes, max branching {tree.get('max_branching')}, "
              f"mean leaf size {tree.get('mean_leaf_size', 0):.1f}")
    val = (json.loads(Path(export_card).read_text()).get("onnx") or {}).get("validation") or {}
    if val:
        print("export validation: " + ", ".join(f"{k}={v}" for k, v in val.items() if not isinstance(v, (dict, list))))
    print("(a short CPU fine-tune: see scripts/demo.sh for its budget; benchmarks/quality.py runs the full study)")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: demo_table.py BASE_EVAL.json HCE_EVAL.json MODEL_CARD.json EXPORT_CARD.json")
    main(*sys.argv[1:])
