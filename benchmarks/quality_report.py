"""The quality study's derived numbers, recomputed from its stored runs on every save.

Per arm: mean and standard deviation over seeds, the learning curve, the time per run. For hce against
every other system of the same block: a paired randomization test and a bootstrap 95 % CI on the
per-query nDCG@10, each arm's scores averaged over its seeds first (so the test's unit is the query, and
seed noise is averaged out rather than counted as queries). The verdict checks issue 10's targets on
what exists, never on missing numbers. Plots: nDCG@10 per arm with each seed's point, and nDCG@10
against epoch per arm.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from hce_serve.metrics import paired_test

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
MAIN_ARMS = ("flat", "mined", "mined-refresh", "hce")
BASELINES = ("flat", "mined", "mined-refresh")
PAIRED = ("ndcg@10", "recall@100")  # per-query metrics of the Holm family (top-10 quality, deep recall)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "mean": {}, "std": {}}
    for m in METRICS:
        vals = [r["metrics"][m] for r in runs]
        out["mean"][m] = round(statistics.fmean(vals), 5)
        out["std"][m] = round(statistics.stdev(vals), 5) if len(vals) > 1 else 0.0
    epochs = sorted({p["epoch"] for r in runs for p in r.get("curve", [])})
    out["curve_mean"] = [{"epoch": e, "ndcg@10": round(statistics.fmean(
        [p["ndcg@10"] for r in runs for p in r.get("curve", []) if p["epoch"] == e]), 5)} for e in epochs]
    out["minutes_per_run"] = round(statistics.fmean([(r["train_seconds"] + r["eval_seconds"]) / 60 for r in runs]), 1)
    return out


def seed_mean_per_query(runs: list[dict[str, Any]], metric: str = "ndcg@10") -> dict[str, float] | None:
    """Each query's score averaged over the seeds; None when a run did not keep ``metric`` per query (R@100
    per query is kept from issue 30 on)."""
    if any(metric not in r["per_query"] for r in runs):
        return None
    qids = runs[0]["per_query"][metric].keys()
    return {q: statistics.fmean(r["per_query"][metric][q] for r in runs) for q in qids}


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values of one family of tests (step-down, monotone, capped at 1).

    Sorted ascending, the i-th smallest (0-based) of m is multiplied by m - i; each adjusted value is the
    running maximum, so the order of the raw p-values is kept. Rejecting where adjusted p < alpha controls
    the family-wise error rate at alpha.
    """
    order = sorted(pvalues, key=lambda k: (pvalues[k], k))
    m, running, out = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[key]))
        out[key] = running
    return out


def arm_negatives(arm: dict[str, Any]) -> str:
    return str(arm["runs"][0]["config"]["negatives"])


def family(block: dict[str, Any]) -> dict[str, Any]:
    """Every hce variant against the best baseline, on nDCG@10 and R@100, Holm-corrected as one family.

    Baselines are the arms without the tree's negatives (flat and the mined family); the best is the one with
    the highest seed-mean nDCG@10 in this block. One family for both metrics because issue 30's target
    accepts a win on either: correcting them together keeps the chance of any false claim at 5 %.
    """
    arms = {a: d for a, d in block.get("arms", {}).items() if d.get("runs")}
    base = [a for a, d in arms.items() if arm_negatives(d) != "hce"]
    variants = [a for a, d in arms.items() if arm_negatives(d) == "hce"]
    if not base or not variants:
        return {}
    best = max(base, key=lambda a: arms[a]["summary"]["mean"]["ndcg@10"])
    tests: dict[str, dict[str, Any]] = {}
    for v in variants:
        for metric in PAIRED:
            a, b = seed_mean_per_query(arms[v]["runs"], metric), seed_mean_per_query(arms[best]["runs"], metric)
            if a is None or b is None:
                continue
            qids = sorted(a)
            t = paired_test([a[q] for q in qids], [b[q] for q in qids])
            tests[f"{v}-vs-{best}:{metric}"] = {
                "variant": v, "metric": metric, "diff_points": round(100 * t["diff"], 2), "p": round(t["p"], 4),
                "ci95_points": [round(100 * t["ci_low"], 2), round(100 * t["ci_high"], 2)],
                "seeds": [len(arms[v]["runs"]), len(arms[best]["runs"])], "queries": t["queries"]}
    adjusted = holm({k: t["p"] for k, t in tests.items()})
    for k, t in tests.items():
        t["p_holm"] = round(adjusted[k], 4)
    return {"best_baseline": best, "metrics": list(PAIRED), "size": len(tests), "tests": tests,
            "method": "paired randomization (sign flip, 100k) per test; Holm-Bonferroni over the whole family"}


def compare(block: dict[str, Any], ref: str = "hce") -> dict[str, Any]:
    """Paired tests of ``ref`` against every other arm and the anchors, in nDCG@10 points."""
    arms = block.get("arms", {})
    if not arms.get(ref, {}).get("runs"):
        return {}
    a = seed_mean_per_query(arms[ref]["runs"])
    assert a is not None
    others: dict[str, dict[str, float]] = {name: m for name, d in arms.items() if name != ref and d.get("runs")
                                           and (m := seed_mean_per_query(d["runs"])) is not None}
    for anchor in ("zero_shot", "bm25"):
        if "per_query" in block.get(anchor, {}):
            others[anchor] = block[anchor]["per_query"]["ndcg@10"]
    out = {}
    for name, b in others.items():
        qids = sorted(a)
        t = paired_test([a[q] for q in qids], [b[q] for q in qids])
        out[f"{ref}-vs-{name}"] = {
            "diff_points": round(100 * t["diff"], 2), "p": round(t["p"], 4),
            "ci95_points": [round(100 * t["ci_low"], 2), round(100 * t["ci_high"], 2)],
            "seeds": [len(arms[ref]["runs"]), len(arms[name]["runs"]) if name in arms else 0],
            "queries": t["queries"], "test": "paired randomization (sign flip), 100k; bootstrap CI",
        }
    return out


def verdict(res: dict[str, Any]) -> dict[str, Any]:
    v: dict[str, Any] = {}
    sup = res["supervised"]
    arms = sup["arms"]
    have = [a for a in BASELINES if arms.get(a, {}).get("runs")]
    if arms.get("hce", {}).get("runs") and have:
        best = max(have, key=lambda a: arms[a]["summary"]["mean"]["ndcg@10"])
        test = sup["tests"][f"hce-vs-{best}"]
        v[sup["dataset"]] = {"hce": arms["hce"]["summary"]["mean"]["ndcg@10"], "best_baseline": best,
                        "best_baseline_ndcg@10": arms[best]["summary"]["mean"]["ndcg@10"],
                        "diff_points": test["diff_points"], "p": test["p"],
                        "target_plus_1pt_p_lt_0.05": test["diff_points"] >= 1.0 and test["p"] < 0.05,
                        "seeds": test["seeds"]}
    fam = sup.get("family")
    # issue 30: the best hce variant against the best baseline, Holm-corrected over the family
    if fam and fam.get("tests"):
        arms_ = {t["variant"] for t in fam["tests"].values()}
        top = max(arms_, key=lambda a: arms[a]["summary"]["mean"]["ndcg@10"])
        t_n = fam["tests"].get(f"{top}-vs-{fam['best_baseline']}:ndcg@10")
        t_r = fam["tests"].get(f"{top}-vs-{fam['best_baseline']}:recall@100")
        win = any(t is not None and t["diff_points"] >= 1.0 and t["p_holm"] < 0.05 for t in (t_n, t_r))
        v[f"{sup['dataset']}-family"] = {
            "split": sup.get("eval_split", "test") if sup.get("dev") else "test", "best_hce_variant": top,
            "best_baseline": fam["best_baseline"], "ndcg@10": t_n, "recall@100": t_r,
            "target_plus_1pt_p_holm_lt_0.05": win}
    for name, block in res["unsupervised"].items():
        runs = block.get("arms", {}).get("hce", {}).get("runs")
        if runs and "zero_shot" in block:
            hce = block["arms"]["hce"]["summary"]["mean"]["ndcg@10"]
            zs, bm = block["zero_shot"]["metrics"]["ndcg@10"], block["bm25"]["metrics"]["ndcg@10"]
            v[name] = {"hce": hce, "zero_shot": zs, "bm25": bm, "target_zero_shot_plus_2pt": hce >= zs + 0.02,
                       "target_above_bm25": hce > bm, "seeds": len(runs)}
    return v


def seed_minutes(sup: dict[str, Any]) -> dict[str, float]:
    """Minutes of training + evaluation per seed for the four main arms (issue 10's 90-minute budget)."""
    out = {}
    seeds = {r["seed"] for a in MAIN_ARMS for r in sup["arms"].get(a, {}).get("runs", [])}
    for s in sorted(seeds):
        runs = [r for a in MAIN_ARMS for r in sup["arms"].get(a, {}).get("runs", []) if r["seed"] == s]
        if len(runs) == len(MAIN_ARMS):
            out[str(s)] = round(sum(r["train_seconds"] + r["eval_seconds"] for r in runs) / 60, 1)
    return out


def report(res: dict[str, Any], out: Path) -> None:
    """Fill summaries, tests, timing and verdict into ``res`` and draw the plots beside the results."""
    blocks = [("scifact", res["supervised"]), *res["unsupervised"].items()]
    for _, block in blocks:
        for d in block.get("arms", {}).values():
            if d.get("runs"):
                d["summary"] = aggregate(d["runs"])
        # hce against everything; and the unguarded pair against each other (the other fair rule).
        fair = {k: t for k, t in compare(block, "hce-unguarded").items() if k.endswith("-vs-mined-unguarded")}
        block["tests"] = {**compare(block), **fair}
        block["family"] = family(block)
    res["seed_minutes_main_arms"] = seed_minutes(res["supervised"])
    res["verdict"] = verdict(res)
    try:
        plot(blocks, out)
    except ImportError:  # matplotlib is in the bench extra; the numbers do not depend on it
        pass


def plot(blocks: list[tuple[str, dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.harness.figures import save_figure
    from benchmarks.harness.paths import plot_path

    blocks = [(n, b) for n, b in blocks if any(d.get("runs") for d in b.get("arms", {}).values())]
    if not blocks:
        return
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.5 * len(blocks), 3.6), squeeze=False)
    for ax, (name, block) in zip(axes[0], blocks, strict=True):
        arms = [a for a, d in block["arms"].items() if d.get("runs")]
        for i, a in enumerate(arms):
            vals = [100 * r["metrics"]["ndcg@10"] for r in block["arms"][a]["runs"]]
            ax.scatter([i] * len(vals), vals, s=14, color="0.4", zorder=3)
            ax.bar(i, float(np.mean(vals)), color="tab:blue" if a.startswith("hce") else "tab:gray", alpha=0.7)
        for anchor, style in (("zero_shot", ":"), ("bm25", "--")):
            if anchor in block:
                ax.axhline(100 * block[anchor]["metrics"]["ndcg@10"], ls=style, color="k", lw=1, label=anchor)
        lo = min(100 * r["metrics"]["ndcg@10"] for a in arms for r in block["arms"][a]["runs"])
        ax.set_ylim(lo - 8, None)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{name}: nDCG@10 (bar: seed mean, dots: seeds)", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, plot_path(out, "arms"))

    fig, axes = plt.subplots(1, len(blocks), figsize=(4.5 * len(blocks), 3.4), squeeze=False)
    for ax, (name, block) in zip(axes[0], blocks, strict=True):
        for a, d in block["arms"].items():
            if d.get("runs"):
                c = d["summary"]["curve_mean"]
                ax.plot([0] + [p["epoch"] for p in c],
                        [100 * block["zero_shot"]["metrics"]["ndcg@10"]] + [100 * p["ndcg@10"] for p in c],
                        marker="o", label=a)
        ax.set_xlabel("epoch (0 = zero-shot)")
        ax.set_title(f"{name}: nDCG@10 by epoch (seed mean)", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, plot_path(out, "curve"))


def markdown(res: dict[str, Any]) -> str:
    """The study's tables for RESULTS.md, rendered from the file
    (``python -m benchmarks.quality --report --markdown``)."""
    lines = []
    for name, block in [(res["supervised"]["dataset"], res["supervised"]), *res["unsupervised"].items()]:
        arms = {a: d for a, d in block.get("arms", {}).items() if d.get("runs")}
        if not arms:
            continue
        n_q = len(block["zero_shot"]["per_query"]["ndcg@10"])
        where = (f"dev queries: {n_q}, held out of train" if block.get("dev") and block.get("eval_split") == "dev"
                 else f"test queries: {n_q}")
        lines += [f"**{name}** ({where})", "",
                  "| system | seeds | nDCG@10 mean ± sd | R@100 | nDCG@10 by epoch (seed mean) | min per run |",
                  "|---|---|---|---|---|---|"]
        for anchor in ("bm25", "zero_shot"):
            m = block[anchor]["metrics"]
            lines.append(f"| {anchor.replace('_', '-')} | – | {m['ndcg@10']:.4f} | {m['recall@100']:.3f} "
                         "| – | – |")
        for a, d in arms.items():
            s = d["summary"]
            curve = " → ".join(f"{p['ndcg@10']:.3f}" for p in s["curve_mean"])
            lines.append(f"| {a} | {','.join(map(str, s['seeds']))} | {s['mean']['ndcg@10']:.4f} ± "
                         f"{s['std']['ndcg@10']:.4f} | {s['mean']['recall@100']:.3f} | {curve} | "
                         f"{s['minutes_per_run']} |")
        if block.get("tests"):
            lines += ["", "| comparison | Δ nDCG@10 (points) | 95 % CI | p | seeds |", "|---|---|---|---|---|"]
            for key, t in block["tests"].items():
                lines.append(f"| {key} | {t['diff_points']:+.2f} | [{t['ci95_points'][0]:+.2f}, "
                             f"{t['ci95_points'][1]:+.2f}]"
                             f" | {t['p']:.4f} | {t['seeds'][0]} vs {t['seeds'][1] or '–'} |")
        fam = block.get("family")
        if fam and fam.get("tests"):
            lines += ["", f"Every hce variant against the best baseline ({fam['best_baseline']}), Holm-corrected "
                      f"over the family of {fam['size']} tests:", "",
                      "| variant | metric | Δ (points) | 95 % CI | p | p (Holm) | seeds |",
                      "|---|---|---|---|---|---|---|"]
            for t in sorted(fam["tests"].values(), key=lambda t: (t["metric"], -t["diff_points"])):
                lines.append(f"| {t['variant']} | {t['metric']} | {t['diff_points']:+.2f} | "
                             f"[{t['ci95_points'][0]:+.2f}, "
                             f"{t['ci95_points'][1]:+.2f}] | {t['p']:.4f} | {t['p_holm']:.4f} | "
                             f"{t['seeds'][0]} vs {t['seeds'][1]} |")
        lines.append("")
    if res.get("seed_minutes_main_arms"):
        lines.append("Minutes per seed for flat + mined + mined-refresh + hce (training + evaluation): "
                     + ", ".join(f"seed {s}: {m}" for s, m in res["seed_minutes_main_arms"].items()))
    return "\n".join(lines)
