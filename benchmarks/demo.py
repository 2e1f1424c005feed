"""The demo's result: print the evaluation table of ``scripts/demo.sh`` (zero-shot vs the short HCE
fine-tune, both through the int8 ONNX encoder and the HNSW index) and write it, stamped, into the demo's own
output folder. Recording a run into benchmarks/results/demo.json is a separate, explicit step, so a checkout
stays clean after the demo.

    python -m benchmarks.demo --base-eval BASE.json --hce-eval HCE.json --model MODEL_DIR --export EXPORT_DIR \\
        --seconds N [--out DEMO_OUT/demo.json]     # demo.sh's last step [the folder holding MODEL_DIR]
    python -m benchmarks.demo --record [DEMO_OUT/demo.json] [--out NAME|PATH.json]   # [demo-out/demo.json -> demo]

The result names scripts/demo.sh, the script that measured it; ``--record`` copies it as measured (the run's
own stamp: machine, commit, date), after checking it is one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import demo_sample
from benchmarks.harness import paths, provenance
from hce_serve.formats import atomic

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
# The fit options that make up the demo's training budget (the rest of train_config.json are defaults).
BUDGET = ("max_steps", "batch_size", "negatives", "negatives_per_query", "doc_max_length", "lr", "tau", "seed")


def table(base: dict[str, Any], hce: dict[str, Any], tree: dict[str, Any], validation: dict[str, Any],
          sample: dict[str, Any] | None = None) -> str:
    # the queries an eval counted (300 on the bundled SciFact); fewer on a sample (HCE_DEMO_DOCS)
    n = base.get("queries")
    claims = "claims" if n is None else f"{n} claim" if n == 1 else f"{n} claims"
    on = f" of a {sample['documents']:,}-document sample" if sample else ""
    lines = ["", f"SciFact test ({claims}{on}), int8 ONNX encoder + HNSW index, this CPU",
             f"{'metric':<12}{'zero-shot':>12}{'HCE (demo)':>12}{'delta':>9}"]
    lines += [f"{m:<12}{base[m]:>12.4f}{hce[m]:>12.4f}{(hce[m] - base[m]) * 100:>+8.1f}p"
              for m in METRICS if m in base and m in hce]
    if tree:
        lines.append(f"tree: {tree.get('levels')} levels, {tree.get('nodes')} nodes, max branching "
                     f"{tree.get('max_branching')}, mean leaf size {tree.get('mean_leaf_size', 0):.1f}")
    if validation:
        lines.append("export validation: " + ", ".join(f"{k}={v}" for k, v in validation.items()
                                                       if not isinstance(v, (dict, list))))
    lines.append("(a short CPU fine-tune: see scripts/demo.sh for its budget; benchmarks/quality.py runs the full "
                 "study)")
    return "\n".join(lines)


SCRIPT = "scripts/demo.sh"
DEFAULT_RUN = paths.ROOT / "demo-out" / "demo.json"  # demo.sh's default output folder (HCE_DEMO_OUT)
TABLE_ARGS = ("base_eval", "hce_eval", "model", "export", "seconds")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-eval", type=Path, help="hce-serve eval JSON of the zero-shot index")
    ap.add_argument("--hce-eval", type=Path, help="hce-serve eval JSON of the fine-tuned index")
    ap.add_argument("--model", type=Path, help="the fine-tuned MODEL_DIR")
    ap.add_argument("--export", type=Path, help="its EXPORT_DIR")
    ap.add_argument("--seconds", type=float, help="the demo's wall time so far")
    ap.add_argument("--record", type=Path, nargs="?", const=DEFAULT_RUN, default=None, metavar="DEMO_JSON",
                    help=f"copy a demo run's result into benchmarks/results [{DEFAULT_RUN.relative_to(paths.ROOT)}]")
    ap.add_argument("--out", default=None,
                    help="where to write: the run's result [DEMO_OUT/demo.json, beside --model]; with --record a "
                         "name under benchmarks/results or a .json path [demo]")
    args = ap.parse_args(argv)
    given = [f"--{a.replace('_', '-')}" for a in TABLE_ARGS if getattr(args, a) is not None]
    if args.record is not None:
        if given:
            ap.error(f"--record copies a finished run's result; {', '.join(given)} belong to the run's own step")
        return record(args.record, paths.result_path(args.out or "demo"))
    missing = [f"--{a.replace('_', '-')}" for a in TABLE_ARGS if getattr(args, a) is None]
    if missing:
        ap.error(f"the run's step needs {', '.join(missing)} (or --record to record a finished run)")
    base, hce = (json.loads(p.read_text()) for p in (args.base_eval, args.hce_eval))
    tree = json.loads((args.model / "hce_model.json").read_text()).get("tree") or {}
    config = json.loads((args.model / "train_config.json").read_text())
    validation = (json.loads((args.export / "hce_model.json").read_text()).get("onnx") or {}).get("validation") or {}
    # a run on a sample of the data (HCE_DEMO_DOCS) trained on the folder benchmarks.demo_sample wrote
    sample_file = Path(config["data"]) / demo_sample.SAMPLE_FILE
    sample = json.loads(sample_file.read_text()) if sample_file.is_file() else None
    print(table(base, hce, tree, validation, sample))
    payload = {"what": "scripts/demo.sh: zero-shot all-MiniLM-L6-v2 vs a short HCE fine-tune, both int8 ONNX + HNSW",
               "data": config["data"], "wall_seconds": round(args.seconds), "zero_shot": base, "hce_demo": hce,
               "train_budget": {k: config.get(k) for k in BUDGET}, "tree": tree}
    if sample:
        payload["sample"] = sample
    out = Path(args.out) if args.out else args.model.resolve().parent / "demo.json"
    written = provenance.write_result(out if out.suffix == ".json" else out / "demo.json", payload, paths.ROOT / SCRIPT)
    print(f"wrote {written}; `python -m benchmarks.demo --record {written}` records it in benchmarks/results",
          file=sys.stderr)
    return 0


def record(run: Path, dest: Path) -> int:
    """Copy a demo run's stamped result to ``dest`` as measured; 1 with one line when it is not one."""
    try:
        rec = json.loads(run.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"error: {run}: cannot read a demo result ({e}); run `bash scripts/demo.sh` first", file=sys.stderr)
        return 1
    missing = [k for k in (*provenance.STAMP_KEYS, "zero_shot", "hce_demo") if not isinstance(rec, dict)
               or k not in rec]
    if missing or rec.get("script") != SCRIPT:
        print(f"error: {run}: not a result of {SCRIPT} (missing {missing or ['script']})", file=sys.stderr)
        return 1
    if rec.get("sample"):
        print(f"warning: {run} is a run on a sample of the data ({rec['sample'].get('documents')} documents), "
              "not the demo's full corpus", file=sys.stderr)
    if str(rec["commit"]).endswith("-dirty"):
        print(f"warning: {run} was measured on uncommitted changes (commit {rec['commit']})", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(dest, json.dumps(rec, indent=2) + "\n")
    print(f"recorded {run} (commit {rec['commit']}, {rec['date']}) in {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
