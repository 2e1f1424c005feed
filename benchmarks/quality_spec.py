"""The quality study's fixed parts: every arm's pinned recipe, the budgets, the metrics and the machine record.

``benchmarks.quality`` runs the study and ``benchmarks.gr`` its generative-retrieval arms; both read these, and
neither imports the other's runner (the gr arms join ``quality.ARMS`` there).
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness.provenance import machine

# name -> (negatives, config overrides). Every arm shares the profile's budget. Every recipe knob an arm depends
# on is pinned here (RECIPE), not taken from the product's defaults, so a changed default can't change an arm.
GUARD = 10  # the shared rule of issue 10: no negative among the query's top 10 (mined ranks from 10; siblings guarded)
# The recipe of every arm before issue 30, knob by knob (what results/quality-cpu.json's runs recorded).
RECIPE: dict[str, Any] = {
    "tau": 0.05, "level_taus": None, "level_weights": (0.5,), "doc_weight": 1.0, "inbatch_weight": 1.0,
    "normalize_centroids": True, "branching": 32, "leaf_size": 16, "tree_balance": 1.3, "kmeans_iters": 20,
    "rebuild_every": -1, "mined_rank_hi": 50, "refresh_mined": False, "negative_encoding": "live",
    "warmup_ratio": 0.1, "weight_decay": 0.01, "grad_clip": 1.0, "span_min_words": 16, "span_max_words": 48,
    "crop_drop": 0.1, "batching": "random", "sibling_select": "leaf", "query_sibling_pool": 20, "sibling_share": 1.0,
    "level_anneal_epochs": 0.0, "pseudo_positive": "document",
}
GUARDED = {**RECIPE, "mined_rank_lo": GUARD, "sibling_guard": GUARD, "negative_filter": f"rank:{GUARD}"}
# No filter for either arm (mined from ranks 0-50): the fair rule under which mined led hce by 0.8 points.
UNGUARDED = {**RECIPE, "mined_rank_lo": 0, "sibling_guard": 0, "negative_filter": "none"}


def percpos(ratio: float) -> dict[str, Any]:
    """TopK-PercPos instead of a rank guard (NV-Retriever): drop negatives scoring above ratio x the positive."""
    return {**UNGUARDED, "negative_filter": f"percpos:{ratio:g}"}


ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "flat": ("flat", dict(GUARDED)),
    "mined": ("mined", dict(GUARDED)),
    "mined-refresh": ("mined", {**GUARDED, "refresh_mined": True}),
    "hce": ("hce", dict(GUARDED)),
    "hce-doc-level-only": ("hce", {**GUARDED, "level_weights": (0.0,)}),
    "hce-raw-centroids": ("hce", {**GUARDED, "normalize_centroids": False}),
    "hce-unguarded": ("hce", {**GUARDED, "sibling_guard": 0, "negative_filter": "none"}),  # no guard against
    "mined-unguarded": ("mined", dict(UNGUARDED)),  # unjudged positives for either arm: mined ranks 0-50
    # What the CPU profile's one method cut (attention dropout off) changes: the base model's 0.1 restored.
    "hce-attn-dropout": ("hce", {**GUARDED, "attention_dropout": None}),
    "mined-attn-dropout": ("mined", {**GUARDED, "attention_dropout": None}),
    # Cached negatives (embeddings from the latest corpus encode, no gradient): S nearly free, so the leaf
    # level can take every leaf-mate. A method change: compare with the live arms above.
    "hce-cached": ("hce", {**GUARDED, "negative_encoding": "cached"}),
    "mined-cached": ("mined", {**GUARDED, "negative_encoding": "cached"}),
    # Issue 30 (HCE v2). Unless named, an arm uses no filter: the family of the best baseline so far
    # (mined-unguarded); each hce arm has its mined twin where the change applies to both.
    # A positive-aware false-negative filter in place of the rank guard (R tuned on the dev split).
    "mined-percpos-0.95": ("mined", percpos(0.95)),
    "hce-percpos-0.95": ("hce", percpos(0.95)),
    "mined-percpos-0.9": ("mined", percpos(0.9)),
    "hce-percpos-0.9": ("hce", percpos(0.9)),
    # TAS-B-style batches from one or two top-level tree nodes: on-topic in-batch negatives for free.
    "hce-topic": ("hce", {**UNGUARDED, "batching": "tree-topic"}),
    "mined-topic": ("mined", {**UNGUARDED, "batching": "tree-topic"}),
    # Siblings the query confuses: the query's top documents under the positive's parent node.
    "hce-query-siblings": ("hce", {**UNGUARDED, "sibling_select": "query"}),
    "hce-mixed": ("hce", {**UNGUARDED, "sibling_share": 0.5}),  # 4 leaf siblings + 3 mined of S = 7
    # the two that did best on dev, together: 4 query-aware siblings + 3 mined (added after hce-query-siblings'
    # dev run took back 2.1 of the 2.9 points leaf siblings lost to mined-unguarded)
    "hce-query-mixed": ("hce", {**UNGUARDED, "sibling_select": "query", "sibling_share": 0.5}),
    # Centroid levels: weight annealed to 0 over the first epoch, or a softer temperature of their own.
    "hce-centroid-anneal": ("hce", {**UNGUARDED, "level_anneal_epochs": 1.0}),
    "hce-centroid-tau0.1": ("hce", {**UNGUARDED, "level_taus": (0.1,)}),
    "hce-centroid-tau0.2": ("hce", {**UNGUARDED, "level_taus": (0.2,)}),
    # The longer regime (one seed first): 6 epochs, a rebuild every half epoch, leaves of 8; mined twin.
    "hce-long": ("hce", {**UNGUARDED, "epochs": 6, "rebuild_every": -2, "leaf_size": 8}),
    "mined-long": ("mined", {**UNGUARDED, "epochs": 6}),
    # Unsupervised (issue 30 item 7): 3 epochs, the tree rebuilt every half epoch (EM, where one epoch built it
    # once from the zero-shot encoder), Contriever's pairs (two independent crops of a document as query and
    # positive). Issue 10's unsupervised guard, so they compare with its hce and flat.
    "hce-em": ("hce", {**GUARDED, "epochs": 3, "rebuild_every": -2, "pseudo_positive": "crop"}),
    "flat-em": ("flat", {**GUARDED, "epochs": 3, "pseudo_positive": "crop"}),
}
# Budgets. cpu: sized so one seed of flat, mined, mined-refresh and hce fits 90 minutes on 2 cores.
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"epochs": 3, "batch_size": 32, "negatives_per_query": 7, "doc_max_length": 128, "precision": "auto",
            "attention_dropout": 0.0, "unsup_epochs": 1, "pseudo_queries": "crop"},
    "gpu": {"epochs": 8, "batch_size": 64, "negatives_per_query": 7, "doc_max_length": 256, "precision": "auto",
            "attention_dropout": None, "unsup_epochs": 1, "pseudo_queries": "crop"},
}
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
DEV_QUERIES = 100  # issue 30: SciFact train queries held out for every choice (epochs, weights, R, the default)
QUERY_LEN = {"arguana": 256}  # DESIGN §8: ArguAna queries are whole arguments; others 64


def machine_facts() -> dict[str, Any]:
    """The harness's machine record beside each run (runs of one study span machines, and a run under load is
    slower, not worse), and whether the CPU computes bf16 natively (training's precision follows it)."""
    from hce_serve import cpu

    return {**machine(), "native_bf16": bool(cpu.bf16_flags())}
