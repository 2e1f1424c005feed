"""The demo's result: print the evaluation table of ``scripts/demo.sh`` (zero-shot vs the short HCE
fine-tune, both through the int8 ONNX encoder and the HNSW index) and write benchmarks/results/demo.json.

    python -m benchmarks.demo --base-eval BASE.json --hce-eval HCE.json --model MODEL_DIR --export EXPORT_DIR \\
        --seconds N

demo.sh calls this as its last step; the file names demo.sh as the script to rerun.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import cli, paths, provenance

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
# The fit options that make up the demo's training budget (the rest of train_config.json are defaults).
BUDGET = ("max_steps", "batch_size", "negatives", "negatives_per_query", "doc_max_length", "lr", "tau", "seed")


def table(base: dict[str, Any], hce: dict[str, Any], tree: dict[str, Any], validation: dict[str, Any]) -> str:
    lines = ["", "SciFact test (300 claims), int8 ONNX encoder + HNSW index, this CPU",
             f"{'metric':<12}{'zero-shot':>12}{'HCE (demo)':>12}{'delta':>9}"]
    lines += [f"{m:<12}{base[m]:>12.4f}{hce[m]:>12.4f}{(hce[m] - base[m]) * 100:>+8.1f}p"
              for m in METRICS if m in base and m in hce]
    if tree:
        lines.append(f"tree: {tree.get('levels')} levels, {tree.get('nodes')} nodes, max branching "
                     f"{tree.get('max_branching')}, mean leaf size {tree.get('mean_leaf_size', 0):.1f}")
    if validation:
        lines.append("export validation: " + ", ".join(f"{k}={v}" for k, v in validation.items()
                                                       if not isinstance(v, (dict, list))))
    lines.append("(a short CPU fine-tune: see scripts/demo.sh for its budget; benchmarks/quality.py runs the full study)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "demo", quick=False)
    ap.add_argument("--base-eval", type=Path, required=True, help="hce-serve eval JSON of the zero-shot index")
    ap.add_argument("--hce-eval", type=Path, required=True, help="hce-serve eval JSON of the fine-tuned index")
    ap.add_argument("--model", type=Path, required=True, help="the fine-tuned MODEL_DIR")
    ap.add_argument("--export", type=Path, required=True, help="its EXPORT_DIR")
    ap.add_argument("--seconds", type=float, required=True, help="the demo's wall time so far")
    args = cli.parse(ap, argv)
    base, hce = (json.loads(p.read_text()) for p in (args.base_eval, args.hce_eval))
    tree = json.loads((args.model / "hce_model.json").read_text()).get("tree") or {}
    config = json.loads((args.model / "train_config.json").read_text())
    validation = (json.loads((args.export / "hce_model.json").read_text()).get("onnx") or {}).get("validation") or {}
    print(table(base, hce, tree, validation))
    payload = {"what": "scripts/demo.sh: zero-shot all-MiniLM-L6-v2 vs a short HCE fine-tune, both int8 ONNX + HNSW",
               "data": config["data"], "wall_seconds": round(args.seconds), "zero_shot": base, "hce_demo": hce,
               "train_budget": {k: config.get(k) for k in BUDGET}, "tree": tree}
    print(f"wrote {provenance.write_result(args.out, payload, paths.ROOT / 'scripts' / 'demo.sh')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
