"""What issue 10's quality study relies on: masks, equal budgets, schedules, guards, and the significance test."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")
torch = pytest.importorskip("torch")

from hce_serve.metrics import paired_test  # noqa: E402
from hce_train.config import REBUILD_EPOCH, TrainConfig  # noqa: E402
from hce_train.data import Corpus, Examples, pseudo_query_examples  # noqa: E402
from hce_train.loop import lr_at  # noqa: E402
from hce_train.negatives import TreeIndex, mine_pools  # noqa: E402
from hce_train.refresh import due  # noqa: E402
from hce_train.step import StepContext, sample_negatives  # noqa: E402
from hce_train.tree_builder import TreeConfig, build_tree  # noqa: E402


@pytest.fixture(scope="module")
def index() -> TreeIndex:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tree = build_tree(x, [str(i) for i in range(300)], TreeConfig(branching=4, leaf_size=6))
    assert tree.num_levels >= 3  # the mask test below needs several centroid levels
    return TreeIndex(tree)


def test_centroid_levels_mask_nodes_holding_another_positive_at_every_level(index):
    paths = index.paths
    a = 0
    for depth in range(index.levels):
        # b: a document that shares a's ancestors above ``depth`` and differs at ``depth``.
        same_above = (paths[:, :depth] == paths[a, :depth]).all(1) if depth else np.ones(len(paths), bool)
        b = int(np.flatnonzero(same_above & (paths[:, depth] != paths[a, depth]))[0])
        pos = frozenset({a, b})
        cand, mask, target = index.centroid_levels(np.array([a]), [pos])[depth]
        unmasked = index.centroid_levels(np.array([a]))[depth]
        b_node = paths[b, depth]
        col = int(np.flatnonzero(cand[0] == b_node)[0])
        assert not mask[0, col]  # b's node is not a wrong answer for this query
        assert mask[0, target[0]]  # the right node stays
        assert unmasked[1][0, col]  # without the positives list it would have been a negative
        assert mask[0].sum() == unmasked[1][0].sum() - 1  # nothing else is masked
        # At deeper levels b's node is no sibling of a's path: nothing to mask there.
        for deeper in range(depth + 1, index.levels):
            c2, m2, _ = index.centroid_levels(np.array([a]), [pos])[deeper]
            assert m2[0].sum() == (c2[0] >= 0).sum()


def test_top_up_takes_the_nearest_leaves_first(index):
    rng = np.random.default_rng(0)
    doc = 5
    leaf = int(index.tree.doc_leaf[doc])
    own = set(index.members[leaf].tolist())
    near = index.near_leaves(leaf)
    cent = index.tree.centroids
    unit = cent / np.linalg.norm(cent, axis=1, keepdims=True)
    sims = [float(unit[n] @ unit[leaf]) for n in near]
    assert sims == sorted(sims, reverse=True)
    picked = [int(d) for d in index.siblings(doc, frozenset(own), 3, rng) if d >= 0]  # own leaf excluded
    first = set(index.members[near[0]].tolist())
    assert set(picked[: min(3, len(first))]) <= first


def _ctx(negatives: str, index: TreeIndex, s: int, n_docs: int = 300) -> tuple[StepContext, Examples]:
    rng = np.random.default_rng(1)
    exs = Examples([f"q{i}" for i in range(20)], np.arange(20, dtype=np.int64),
                   [frozenset({i, (i + 1) % 20}) for i in range(20)])
    corpus = Corpus([str(i) for i in range(n_docs)], [f"doc {i}" for i in range(n_docs)])
    cfg = TrainConfig(negatives=negatives, negatives_per_query=s).resolved()
    ctx = StepContext(cfg, None, None, corpus, None)  # type: ignore[arg-type]
    ctx.tree = index
    q = rng.standard_normal((20, 8)).astype(np.float32)
    d = rng.standard_normal((n_docs, 8)).astype(np.float32)
    ctx.mined = mine_pools(q, d, exs.positives, 10, 50)
    ctx.guard = mine_pools(q, d, exs.positives, 0, 10)
    return ctx, exs


@pytest.mark.parametrize("s", [3, 7])
def test_every_arm_gets_the_same_s_and_no_positive_or_guarded_document(index, s):
    batch = np.arange(8)
    for negatives in ("flat", "mined", "hce"):
        ctx, exs = _ctx(negatives, index, s)
        neg = sample_negatives(ctx, exs, batch, step=0)
        assert neg.shape == (8, s)
        assert (neg >= 0).all(), negatives  # 300 documents: every arm fills all S slots
        for i, ex in enumerate(batch):
            row = set(neg[i].tolist())
            assert len(row) == s and not row & exs.positives[ex]
            if negatives == "hce":  # the guard: none of the query's top-10 (what mined skips as ranks 0-9)
                assert not row & set(ctx.guard[ex].tolist())
            if negatives == "mined":
                assert row <= set(ctx.mined[ex].tolist())


def test_learning_rate_warms_up_linearly_then_decays_to_zero():
    total, base = 100, 1e-3
    lrs = [lr_at(s, total, base, 0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(base / 10) and lrs[9] == pytest.approx(base)
    assert all(b > a for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(b < a for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(base / 90) and lr_at(total, total, base, 0.1) == 0


def test_refresh_schedule():
    # First step always; per epoch: at each epoch's first step only; every N steps; 0 = never again.
    assert due(REBUILD_EPOCH, 0, 0, -1) and due(5, 3, 3, -1) and due(0, 0, 0, -1)
    assert due(REBUILD_EPOCH, 29, 0, 0) and not due(REBUILD_EPOCH, 30, 1, 29)
    assert not due(REBUILD_EPOCH, 29, 0, 29)  # already refreshed at this step (e.g. a resumed run)
    assert [s for s in range(1, 30) if due(10, s, s % 29, 0)] == [10, 20]
    assert not any(due(0, s, s % 7, 0) for s in range(1, 30))


def test_crop_pseudo_queries_drop_words_and_keep_at_least_one():
    corpus = Corpus(["a", "b"], [" ".join(f"w{i}" for i in range(200)), "single"])
    span = pseudo_query_examples(corpus, np.random.default_rng(0), 40, 40)
    crop = pseudo_query_examples(corpus, np.random.default_rng(0), 40, 40, drop=0.5)
    assert len(span.queries[0].split()) == 40
    words = crop.queries[0].split()
    assert 5 < len(words) < 40 and set(words) <= set(span.queries[0].split())  # same span, words dropped
    assert crop.queries[1] == "single"


def test_paired_test_on_cases_with_known_answers():
    # Ten queries, all improved by the same 0.1: only the all-plus and all-minus sign assignments are as
    # extreme as the observed mean, so the exact two-sided p is 2 / 2**10; the bootstrap CI is the point.
    t = paired_test([0.6] * 10, [0.5] * 10, resamples=200_000)
    assert t["diff"] == pytest.approx(0.1)
    assert t["p"] == pytest.approx(2 / 1024, abs=4e-4)
    assert t["ci_low"] == pytest.approx(0.1) and t["ci_high"] == pytest.approx(0.1)
    # Differences that cancel exactly: no evidence at all.
    t = paired_test([1, 0, 1, 0], [0, 1, 0, 1])
    assert t["diff"] == 0 and t["p"] == 1.0 and t["ci_low"] < 0 < t["ci_high"]
    with pytest.raises(ValueError):
        paired_test([1.0], [1.0, 2.0])


def _study(tmp_path, data_root, bert, out, *extra: str):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "benchmarks.quality", "--data-root", str(data_root), "--supervised", "tiny",
           "--base-model", str(bert), "--max-steps", "2", "--batch-size", "8", "--epochs", "2",
           "--out", str(out), "--work", str(tmp_path / "work"), "--no-progress", *extra]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)


ISSUE_10_ARMS = ("flat", "mined", "mined-refresh", "hce", "hce-doc-level-only", "hce-raw-centroids", "hce-unguarded",
                 "mined-unguarded", "hce-attn-dropout", "mined-attn-dropout", "hce-cached", "mined-cached")


def test_quality_study_runs_every_arm_and_resumes(tiny_beir, tiny_bert, tmp_path):
    """A 2-step CPU run of every arm through benchmarks/quality.py, then --resume skips what is done."""
    import json

    from benchmarks.quality import ARMS

    out = tmp_path / "q.json"
    arms = ",".join(a for a in ARMS)
    r = _study(tmp_path, tiny_beir.parent, tiny_bert, out, "--arms", arms, "--unsupervised", "tiny",
               "--unsup-arms", "hce,flat,hce-em", "--seeds", "0", "--fresh", "--note", "smoke", "--dev-queries", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    sup = res["supervised"]
    assert set(sup["arms"]) == set(ARMS)
    dev = sup["dev"]["queries"]
    assert len(dev) == 6 and sup["eval_split"] == "dev" and sorted(sup["zero_shot"]["per_query"]["ndcg@10"]) == dev
    for name, arm in sup["arms"].items():
        (run,) = arm["runs"]
        assert run["steps"] == 2 and run["config"]["negatives_per_query"] == 7, name  # the profile's S for all
        assert sorted(run["per_query"]["ndcg@10"]) == dev and sorted(run["per_query"]["recall@100"]) == dev
        assert run["config"]["holdout_queries"] == dev  # trained without the dev queries
        assert run["curve"][-1]["ndcg@10"] == run["metrics"]["ndcg@10"]
        if name in ISSUE_10_ARMS:
            assert run["config"]["sibling_guard"] == (0 if name.endswith("-unguarded") else 10)  # = mined's ranks
    for name, want in (("hce-percpos-0.95", "percpos:0.95"), ("hce-topic", "none"),
                       ("mined-percpos-0.9", "percpos:0.9")):
        assert sup["arms"][name]["runs"][0]["config"]["negative_filter"] == want
    assert sup["arms"]["hce-topic"]["runs"][0]["config"]["batching"] == "tree-topic"
    assert sup["arms"]["hce-long"]["runs"][0]["config"]["epochs"] == 6
    fam = sup["family"]
    variants = [a for a in ARMS if ARMS[a][0] == "hce"]
    assert fam["size"] == 2 * len(variants) and all(t["p_holm"] >= t["p"] for t in fam["tests"].values())
    assert sup["arms"]["mined-refresh"]["runs"][0]["config"]["refresh_mined"] is True
    assert sup["arms"]["hce-attn-dropout"]["runs"][0]["config"]["attention_dropout"] is None
    assert sup["arms"]["hce"]["runs"][0]["config"]["attention_dropout"] == 0.0
    assert {f"hce-vs-{a}" for a in ARMS if a != "hce"} | {"hce-vs-zero_shot", "hce-vs-bm25",
                                                         "hce-unguarded-vs-mined-unguarded"} == set(sup["tests"])
    assert 0 < sup["tests"]["hce-vs-flat"]["p"] <= 1
    assert set(res["unsupervised"]["tiny"]["arms"]) == {"hce", "flat", "hce-em"}
    assert res["unsupervised"]["tiny"]["arms"]["hce-em"]["runs"][0]["config"]["pseudo_positive"] == "crop"
    assert res["unsupervised"]["tiny"]["arms"]["hce"]["runs"][0]["config"]["mode"] == "unsupervised"
    assert res["notes"][0]["note"] == "smoke" and res["script"] == "benchmarks/quality.py"
    assert (tmp_path / "q-arms.png").is_file() and (tmp_path / "q-curve.png").is_file()
    r = _study(tmp_path, tiny_beir.parent, tiny_bert, out, "--report", "--markdown")
    assert r.returncode == 0 and "| hce | 0 |" in r.stdout and "| hce-vs-mined-refresh |" in r.stdout
    assert "dev queries: 6, held out of train" in r.stdout and "Holm-corrected" in r.stdout
    r = _study(tmp_path, tiny_beir.parent, tiny_bert, out, "--arms", "flat", "--seeds", "0", "--resume",
               "--eval-split", "test")
    assert r.returncode == 1 and "evaluates on the dev split" in r.stderr  # one file, one protocol

    # The final table: the same training (dev held out), evaluated on test, each run's dev numbers kept.
    final = tmp_path / "final.json"
    r = _study(tmp_path, tiny_beir.parent, tiny_bert, final, "--arms", "flat", "--unsupervised", "none",
               "--seeds", "0", "--eval-split", "test", "--dev-queries", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    fin = json.loads(final.read_text())["supervised"]
    (run,) = fin["arms"]["flat"]["runs"]
    assert fin["dev"]["queries"] == dev and run["config"]["holdout_queries"] == dev
    assert not set(run["per_query"]["ndcg@10"]) & set(dev) and sorted(run["dev"]["per_query"]["ndcg@10"]) == dev
    # Issue 10's protocol (--dev-queries 0): all of train, evaluated on test.
    legacy = tmp_path / "legacy.json"
    r = _study(tmp_path, tiny_beir.parent, tiny_bert, legacy, "--arms", "flat", "--unsupervised", "none",
               "--seeds", "0", "--dev-queries", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    old = json.loads(legacy.read_text())["supervised"]
    assert "dev" not in old and old["arms"]["flat"]["runs"][0]["config"]["holdout_queries"] == []
    assert set(old["arms"]["flat"]["runs"][0]["per_query"]["ndcg@10"]) == set(run["per_query"]["ndcg@10"])

    # --resume runs only what is missing (seed 1), keeping seed 0's numbers as they were.
    before = sup["arms"]["flat"]["runs"][0]
    r = _study(tmp_path, tiny_beir.parent, tiny_bert, out, "--arms", "flat", "--unsupervised", "none",
               "--seeds", "0,1", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skip tiny/flat seed 0" in r.stderr and "run tiny supervised flat seed 1" in r.stderr
    flat = json.loads(out.read_text())["supervised"]["arms"]["flat"]
    assert [x["seed"] for x in flat["runs"]] == [0, 1] and flat["runs"][0] == before
    # An existing file is never overwritten by accident, nor resumed under another budget.
    r = _study(tmp_path, tiny_beir.parent, tiny_bert, out, "--arms", "flat", "--seeds", "0")
    assert r.returncode == 1 and "--resume" in r.stderr
    r = _study(tmp_path, tiny_beir.parent, tiny_bert, out, "--arms", "flat", "--seeds", "0", "--resume",
               "--doc-max-length", "64")
    assert r.returncode == 1 and "budget" in r.stderr


@pytest.mark.parametrize("negatives", ["flat", "hce"])
def test_cached_negatives_train_and_resume(tiny_beir, tiny_bert, tmp_path, negatives):
    """Cached negatives: every arm re-encodes the corpus on the schedule; a resumed run re-encodes it too."""
    import json

    from click.testing import CliRunner

    from hce_train.cli import main as cli

    out = tmp_path / "m"
    base = ["fit", "--data", str(tiny_beir), "--out", str(out), "--base-model", str(tiny_bert), "--batch-size", "8",
            "--negatives", negatives, "--negative-encoding", "cached", "--doc-max-length", "32", "--no-progress", "-q"]
    res = CliRunner().invoke(cli, [*base, "--max-steps", "2"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*base, "--max-steps", "3", "--resume"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in steps)
    events = {r["event"] for r in rows if "event" in r}
    assert events == ({"refresh", "tree_rebuild"} if negatives == "flat" else {"tree_rebuild"})  # + the final tree
    assert json.loads((out / "train_config.json").read_text())["negative_encoding"] == "cached"
