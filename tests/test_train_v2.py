"""Issue 30 (HCE v2): the dev split, the percpos filter, query-aware siblings, tree-topic batches, the Holm
correction, and the study's arms keeping their recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
torch = pytest.importorskip("torch")

from hce_train.config import TrainConfig  # noqa: E402
from hce_train.data import Corpus, Examples, holdout_queries, supervised_examples  # noqa: E402
from hce_train.negatives import (  # noqa: E402
    Tree,
    TreeIndex,
    mine_pools,
    percpos_bounds,
    percpos_exclusions,
    query_sibling_pools,
)
from hce_train.step import StepContext, sample_negatives  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def _unit(angles: list[float]) -> np.ndarray:
    return np.array([[np.cos(a), np.sin(a)] for a in angles], np.float32)


def _two_level_tree(n_docs: int = 8) -> TreeIndex:
    """root 0 -> top nodes 1, 2 -> leaves 3, 4 (under 1) and 5, 6 (under 2); docs 0-3 under 1, 4-7 under 2."""
    parent = np.array([-1, 0, 0, 1, 1, 2, 2], np.int32)
    doc_leaf = np.array([3, 3, 4, 4, 5, 5, 6, 6], np.int32)[:n_docs]
    cent = np.ones((7, 2), np.float32)
    return TreeIndex(Tree(parent, cent, doc_leaf, [str(i) for i in range(n_docs)]))


# ---- the percpos filter (TopK-PercPos) ----------------------------------------------------------------------
def test_percpos_drops_negatives_scoring_above_r_times_the_positive():
    q = np.array([[1.0, 0.0]], np.float32)
    # scores against q: doc0 (the positive) .80, doc1 .90, doc2 .77, doc3 .70, doc4 .50, doc5 .10
    d = np.array([[s, np.sqrt(1 - s * s)] for s in (0.8, 0.9, 0.77, 0.7, 0.5, 0.1)], np.float32)
    pos = [frozenset({0})]
    bound = percpos_bounds(q, d, np.array([0]), 0.95)
    assert bound[0] == pytest.approx(0.76)
    # No filter: the ranks 0..3 after the positive; percpos 0.95: docs above .76 (1 and 2) are gone first.
    assert mine_pools(q, d, pos, 0, 3).tolist() == [[1, 2, 3]]
    assert mine_pools(q, d, pos, 0, 3, max_scores=bound).tolist() == [[3, 4, 5]]
    assert mine_pools(q, d, pos, 1, 3, max_scores=bound).tolist() == [[4, 5]]  # ranks lo..hi of what is left
    assert mine_pools(q, d, pos, 0, 6, max_scores=bound).tolist() == [[3, 4, 5, -1, -1, -1]]
    # A looser R keeps doc 2 (.77 < .99 x .8 = .792) but still drops doc 1.
    assert mine_pools(q, d, pos, 0, 3, max_scores=percpos_bounds(q, d, np.array([0]), 0.99)).tolist() == [[2, 3, 4]]


def test_percpos_exclusions_cover_the_sibling_pool_only_and_never_a_positive():
    index = _two_level_tree()
    q = np.array([[1.0, 0.0]], np.float32)
    # docs 0-3 under top node 1 (the positive doc 0's parent), 4-7 under node 2
    d = np.array([[s, np.sqrt(1 - s * s)] for s in (0.8, 0.9, 0.77, 0.3, 0.99, 0.95, 0.1, 0.2)], np.float32)
    ex = percpos_exclusions(index, q, d, np.array([0]), [frozenset({0, 2})], 0.95)
    # doc 1 (.90) is over .76; doc 2 (.77) is over too but is a positive; docs 4 and 5 score higher still
    # but lie under the other top node, where no sibling of doc 0 is ever drawn.
    assert set(ex[0][ex[0] >= 0].tolist()) == {1}


def test_mined_arm_with_percpos_mines_below_the_bound(tmp_path):
    from hce_train.refresh import mined_pools

    q = np.array([[1.0, 0.0]], np.float32)
    d = np.array([[s, np.sqrt(1 - s * s)] for s in (0.8, 0.9, 0.77, 0.7, 0.5, 0.1)], np.float32)
    exs = Examples(["q"], np.array([0]), [frozenset({0})])
    cfg = TrainConfig(negatives="mined", negative_filter="percpos:0.95", mined_rank_hi=4).resolved()
    assert cfg.sibling_guard == 0 and cfg.mined_rank_lo == 0 and cfg.percpos == 0.95
    assert mined_pools(cfg, q, d, exs).tolist() == [[3, 4, 5, -1]]
    cfg = TrainConfig(negatives="mined", negative_filter="rank:1", mined_rank_hi=4).resolved()
    assert cfg.sibling_guard == 1 and cfg.mined_rank_lo == 1 and cfg.percpos is None
    assert mined_pools(cfg, q, d, exs).tolist() == [[2, 3, 4]]


@pytest.mark.parametrize("text,kind", [("none", "none"), ("rank:10", "rank:10"), ("percpos:0.950", "percpos:0.95")])
def test_negative_filter_resolves_to_one_canonical_form(text, kind):
    cfg = TrainConfig(negative_filter=text).resolved()
    assert cfg.negative_filter == kind and cfg.resolved() == cfg  # resolving twice changes nothing
    # Configs written before the knob keep their meaning: the rank guard is derived from sibling_guard.
    assert TrainConfig(mined_rank_lo=10, sibling_guard=10).resolved().negative_filter == "rank:10"
    assert TrainConfig(sibling_guard=0).resolved().negative_filter == "none"


@pytest.mark.parametrize("bad", ["percpos:0", "percpos:1.5", "percpos:x", "rank:-1", "rank:", "top:3", "none:1"])
def test_bad_negative_filters_are_one_line_errors(bad):
    from hce_serve.errors import ConfigError

    with pytest.raises(ConfigError, match="negative_filter"):
        TrainConfig(negative_filter=bad)


def test_cli_rejects_a_bad_negative_filter_as_a_usage_error(tiny_beir, tmp_path):
    from click.testing import CliRunner

    from hce_train.cli import main as cli

    res = CliRunner().invoke(cli, ["fit", "--data", str(tiny_beir), "--out", str(tmp_path / "m"),
                                   "--negative-filter", "percpos:2"])
    assert res.exit_code == 2 and "percpos" in res.output and "Traceback" not in res.output


# ---- query-aware siblings ------------------------------------------------------------------------------------
def test_query_siblings_stay_inside_the_parents_subtree_ranked_by_the_query():
    index = _two_level_tree()
    rng = np.random.default_rng(0)
    d = rng.standard_normal((8, 2)).astype(np.float32)
    q = rng.standard_normal((3, 2)).astype(np.float32)
    rows = np.array([0, 5, 2])
    positives = [frozenset({0}), frozenset({5, 7}), frozenset({2})]
    pools = query_sibling_pools(index, q, d, rows, positives, pool=8)
    for i, doc in enumerate(rows):
        under = set(index.parent_docs(int(doc)).tolist())
        got = [int(x) for x in pools[i] if x >= 0]
        assert set(got) <= under and not set(got) & positives[i]  # inside the parent's subtree, no positive
        assert set(got) == under - positives[i]  # the pool is large enough to hold them all
        scores = [float(d[x] @ q[i]) for x in got]
        assert scores == sorted(scores, reverse=True)  # best first, by the query
    # The filter's rows are removed before ranking; a small pool keeps the query's top documents.
    excl = np.array([[1, -1], [-1, -1], [-1, -1]])
    small = query_sibling_pools(index, q, d, rows, positives, pool=1, exclude=excl)
    best0 = max((x for x in (2, 3)), key=lambda x: float(d[x] @ q[0]))
    assert small[0].tolist() == [best0]


def _ctx(cfg: TrainConfig, index: TreeIndex, n: int = 4) -> tuple[StepContext, Examples]:
    corpus = Corpus([str(i) for i in range(8)], [f"doc {i}" for i in range(8)])
    exs = Examples([f"q{i}" for i in range(n)], np.arange(n, dtype=np.int64), [frozenset({i}) for i in range(n)])
    ctx = StepContext(cfg, None, None, corpus, None)  # type: ignore[arg-type]
    ctx.tree = index
    return ctx, exs


def test_query_sibling_and_mixed_sampling_draw_from_their_pools():
    index = _two_level_tree()
    rng = np.random.default_rng(1)
    q = rng.standard_normal((4, 2)).astype(np.float32)
    d = rng.standard_normal((8, 2)).astype(np.float32)
    cfg = TrainConfig(negatives="hce", sibling_select="query", negatives_per_query=2, query_sibling_pool=2).resolved()
    ctx, exs = _ctx(cfg, index)
    ctx.sib_pool = query_sibling_pools(index, q, d, exs.doc_rows, exs.positives, 2)
    neg = sample_negatives(ctx, exs, np.arange(4), step=0)
    for i in range(4):
        assert set(neg[i].tolist()) == set(ctx.sib_pool[i].tolist())  # S = P = 2: the query's top two
    # Mixed: round(0.5 x 3) = 2 siblings from the leaf and its parent, then 1 from the mined pool, no repeats.
    cfg = TrainConfig(negatives="hce", sibling_share=0.5, negatives_per_query=3).resolved()
    ctx, exs = _ctx(cfg, index)
    ctx.mined = np.array([[7, 6, 5], [6, 7, 4], [7, 5, 6], [4, 5, 6]])
    neg = sample_negatives(ctx, exs, np.arange(4), step=0)
    for i in range(4):
        row = neg[i].tolist()
        assert len(set(row)) == 3 and i not in row
        assert set(row[:2]) <= set(index.parent_docs(i).tolist()) and row[2] in ctx.mined[i].tolist()


# ---- the dev split -------------------------------------------------------------------------------------------
def _qrels(path: Path) -> set[str]:
    return {line.split("\t")[0] for line in path.read_text().splitlines()[1:] if line.strip()}


def test_dev_split_is_fixed_seeded_and_never_meets_the_test_split(tiny_beir):
    dev = holdout_queries(tiny_beir, "train", 6, seed=0)
    assert dev == sorted(dev) and len(set(dev)) == 6
    assert dev == holdout_queries(tiny_beir, "train", 6, seed=0)  # fixed
    assert dev != holdout_queries(tiny_beir, "train", 6, seed=1)  # seeded
    assert set(dev) <= _qrels(tiny_beir / "qrels" / "train.tsv")
    assert not set(dev) & _qrels(tiny_beir / "qrels" / "test.tsv")
    corpus_exs = supervised_examples(tiny_beir, "train", _corpus(tiny_beir), holdout=dev)
    full = supervised_examples(tiny_beir, "train", _corpus(tiny_beir))
    held_texts = {q["text"] for q in map(json.loads, (tiny_beir / "queries.jsonl").read_text().splitlines())
                  if q["_id"] in dev}
    assert not held_texts & set(corpus_exs.queries) and len(corpus_exs) == len(full) - 6  # one pair per query here


def test_dev_split_skips_queries_judged_in_test_too(tiny_beir, tmp_path):
    import shutil

    data = tmp_path / "overlap"
    shutil.copytree(tiny_beir, data)
    train = _qrels(data / "qrels" / "train.tsv")
    shared = sorted(train)[:10]  # judged in both splits: a dev split may take none of them
    with open(data / "qrels" / "test.tsv", "a") as fh:
        fh.writelines(f"{q}\tprotein-0\t1\n" for q in shared)
    for seed in range(5):
        assert not set(holdout_queries(data, "train", len(train) - 11, seed)) & set(shared)
    from hce_serve.errors import DataError

    with pytest.raises(DataError, match="cannot hold out"):
        holdout_queries(data, "train", len(train) - 10, 0)


@pytest.mark.skipif(not (SCIFACT / "qrels" / "train.tsv").is_file(), reason="SciFact is not in ../shared/data")
def test_scifact_dev_split_never_meets_the_test_split():
    dev = holdout_queries(SCIFACT, "train", 100, seed=0)
    assert len(dev) == 100 and not set(dev) & _qrels(SCIFACT / "qrels" / "test.tsv")
    assert set(dev) <= _qrels(SCIFACT / "qrels" / "train.tsv")


def _corpus(data: Path) -> Corpus:
    from hce_train.data import load_corpus

    return load_corpus(data)


# ---- Holm ----------------------------------------------------------------------------------------------------
def test_holm_on_a_known_case():
    from benchmarks.quality_report import holm

    # Sorted: .005 x 4 = .02; .01 x 3 = .03; .03 x 2 = .06; .04 x 1 = .04 -> .06 (kept monotone).
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert adj == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}  # capped at 1
    assert holm({"only": 0.04}) == {"only": 0.04}  # a family of one is not corrected
    assert holm({}) == {}


# ---- the study's arms keep their recipes -----------------------------------------------------------------------
def test_issue_10_arms_resolve_to_the_configs_their_runs_recorded():
    """Every arm of results/quality-cpu.json, built from today's ARMS, gives the config its runs recorded."""
    from benchmarks.quality import ARMS

    res = json.loads((ROOT / "benchmarks" / "results" / "quality-cpu.json").read_text())
    budget = res["budget"]
    for block in (res["supervised"], *res["unsupervised"].values()):
        for arm, d in block["arms"].items():
            for run in d["runs"]:
                old = run["config"]
                negatives, overrides = ARMS[arm]
                shared = {k: budget[k] for k in ("batch_size", "negatives_per_query", "doc_max_length", "precision",
                                                 "attention_dropout", "pseudo_queries") if k in budget}
                cfg = TrainConfig(**{"data": old["data"], "out": old["out"], "mode": old["mode"],
                                     "negatives": negatives, "seed": old["seed"], "epochs": old["epochs"],
                                     "query_max_length": old["query_max_length"], **shared, **overrides}).resolved()
                new = json.loads(json.dumps(cfg.to_json()))
                differ = {k: (v, new.get(k)) for k, v in old.items() if new.get(k) != v}
                assert not differ, (arm, differ)


# ---- tree-topic batches --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_topic_batches_lie_under_at_most_two_topics_and_cover_every_example_once(seed):
    from hce_train.data import topic_batches

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 70, size=int(rng.integers(2, 20)))  # topics smaller and larger than a batch
    groups = rng.permutation(np.repeat(np.arange(sizes.size) * 7 + 3, sizes))  # arbitrary node ids
    batches = topic_batches(groups, 16, seed=0, epoch=seed)
    assert all(b.size == 16 for b in batches)
    assert all(np.unique(groups[b]).size <= 2 for b in batches)
    firsts = [set(b.tolist()) for b in batches]
    assert set().union(*firsts) == set(range(groups.size))  # every example in the epoch ...
    counts = np.bincount(np.concatenate([np.unique(b) for b in batches]), minlength=groups.size)
    assert (counts == 1).all()  # ... in exactly one batch (repeats fill a batch only with its own rows)
    assert len(batches) >= -(-groups.size // 16)
    assert [b.tolist() for b in topic_batches(groups, 16, 0, seed)] == [b.tolist() for b in batches]  # seeded


def test_topic_batches_on_a_real_tree_and_in_a_fit(tiny_beir, tiny_bert, tmp_path):
    """--batching tree-topic: batches planned from the tree at each epoch start, every query once an epoch,
    the step budget of random batches, and a resumed run continuing the same plan."""
    from click.testing import CliRunner

    from hce_train.cli import main as cli

    out = tmp_path / "m"
    base = ["fit", "--data", str(tiny_beir), "--out", str(out), "--base-model", str(tiny_bert), "--batch-size", "4",
            "--negatives", "mined", "--batching", "tree-topic", "--leaf-size", "4", "--branching", "4",
            "--doc-max-length", "32", "--epochs", "2", "--no-progress", "-q"]
    res = CliRunner().invoke(cli, [*base, "--max-steps", "7"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*base, "--resume"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 13))  # 24 train pairs / 4 = 6 steps an epoch, 2 epochs
    plans = [r for r in rows if r.get("event") == "topic_batches"]
    assert [p["epoch"] for p in plans] == [0, 1] and all(p["batches"] == 6 and p["topics"] > 1 for p in plans)
    # each epoch's start, the first run's final tree (it stopped at 7), the final tree
    assert [r["step"] for r in rows if r.get("event") == "tree_rebuild"] == [0, 6, 7, 12]

    from hce_train.data import load_corpus, supervised_examples, topic_batches
    from hce_train.negatives import TreeIndex as TI

    index = TI(Tree.load(out / "checkpoint"))  # the tree the second epoch was planned from
    exs = supervised_examples(tiny_beir, "train", load_corpus(tiny_beir))
    groups = index.top_nodes(exs.doc_rows)
    plan = np.load(out / "checkpoint" / "array-plan.npy")
    assert [b.tolist() for b in plan] == [b.tolist() for b in topic_batches(groups, 4, 0, 1)]
    assert all(np.unique(groups[b]).size <= 2 for b in plan)


def test_half_epoch_rebuilds_and_level_annealing(tiny_beir, tiny_bert, tmp_path):
    from click.testing import CliRunner

    from hce_train.cli import main as cli
    from hce_train.refresh import due

    assert [p for p in range(7) if due(-2, 10 + p, p, 9, 7)] == [0, 3]
    out = tmp_path / "m"
    res = CliRunner().invoke(cli, ["fit", "--data", str(tiny_beir), "--out", str(out), "--base-model", str(tiny_bert),
                                   "--batch-size", "4", "--negatives", "hce", "--rebuild-every", "half-epoch",
                                   "--level-anneal-epochs", "1", "--leaf-size", "4", "--branching", "4",
                                   "--doc-max-length", "32", "--epochs", "2", "--no-progress", "-q"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    rebuilds = [r["step"] for r in rows if r.get("event") == "tree_rebuild"]
    assert rebuilds == [0, 3, 6, 9, 12]  # epoch starts and middles (6 steps an epoch), then the final tree
    scale = [r["level_scale"] for r in rows if "event" not in r]
    assert scale[:6] == pytest.approx([1 - i / 6 for i in range(6)], abs=1e-4) and scale[6:] == [0.0] * 6


def test_unsupervised_two_crops_are_independent_views_of_the_document():
    from hce_train.data import pseudo_query_examples

    words = [f"w{i}" for i in range(300)]
    corpus = Corpus(["a", "b"], [" ".join(words), "tiny doc"])
    one = pseudo_query_examples(corpus, np.random.default_rng(0), 20, 40)
    two = pseudo_query_examples(corpus, np.random.default_rng(0), 20, 40, positive_rng=np.random.default_rng(1))
    assert one.pos_texts is None and two.queries == one.queries  # the queries do not change
    q, p = two.queries[0].split(), two.pos_texts[0].split()
    assert 20 <= len(p) <= 40 and set(p) <= set(words) and p != q  # a crop of the same document, another one
    assert two.pos_texts[1] == "tiny doc"


def test_unsupervised_em_with_crop_positives_trains(tiny_beir, tiny_bert, tmp_path):
    from click.testing import CliRunner

    from hce_train.cli import main as cli

    out = tmp_path / "m"
    res = CliRunner().invoke(cli, ["fit", "--data", str(tiny_beir), "--out", str(out), "--base-model", str(tiny_bert),
                                   "--mode", "unsupervised", "--pseudo-positive", "crop", "--rebuild-every",
                                   "half-epoch", "--batch-size", "16", "--epochs", "2", "--doc-max-length", "32",
                                   "--no-progress", "-q"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("event") == "tree_rebuild"] == [0, 2, 4, 6, 8]  # 4 steps an epoch
    assert all(np.isfinite(r["loss"]) for r in rows if "event" not in r)
    assert json.loads((out / "train_config.json").read_text())["pseudo_positive"] == "crop"
