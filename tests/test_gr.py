"""The generative-retrieval baseline (issue 33): constrained decoding, beam search against brute force,
prefix-aware logits, documents added without retraining, and the ``gr`` arm through benchmarks/quality.py."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")
torch = pytest.importorskip("torch")

from hce_train.gr.codes import TreeCodes  # noqa: E402
from hce_train.gr.model import CodeTensors, GRDecoder  # noqa: E402
from hce_train.gr.search import all_scores, beam_search  # noqa: E402
from hce_train.tree_builder import TreeConfig, build_tree  # noqa: E402


def _tiny(n_docs: int = 60, seed: int = 0) -> tuple[TreeCodes, GRDecoder, CodeTensors]:
    """A 3-level tree over random vectors and a decoder whose every parameter is random (adapter included),
    so that no part of the score is a constant the tests could pass by accident."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_docs, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    codes = TreeCodes(build_tree(x, [f"d{i}" for i in range(n_docs)], TreeConfig(branching=3, leaf_size=3)))
    assert codes.levels == 3
    torch.manual_seed(seed)
    dec = GRDecoder(codes.n_nodes, codes.n_docs, in_dim=8, dim=16, scale=5.0)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    dec.eval()
    return codes, dec, CodeTensors.of(codes)


def test_constrained_decoding_never_emits_a_path_outside_the_tree():
    alike = _tiny()
    # A decoder for which every node looks alike (one embedding for all): only the tree's constraint decides
    # what a step can emit. Then an unconstrained random one on another tree.
    with torch.no_grad():
        w = alike[1].node_emb.weight
        w.copy_(w[1].expand_as(w).clone())
    for codes, d, ct in (alike, _tiny(seed=1)):
        x = d.query_state(torch.randn(7, 8))
        tab = d.tables(ct)
        for beam in (1, 2, 5, 1000):
            scores, rows, paths = beam_search(d, x, tab, ct, beam, k=codes.n_docs, with_paths=True)
            assert (rows >= 0).any(1).all()
            for i in range(rows.shape[0]):
                for j in np.flatnonzero(rows[i].numpy() >= 0):
                    path = paths[i, j].tolist()
                    assert codes.is_path(path), path  # each node a child of the one before, ending at a leaf
                    assert path == codes.paths[int(rows[i, j])].tolist()  # the document hangs under that leaf
            if beam == 1:  # one leaf per query: its documents only, all on the same path
                for i in range(rows.shape[0]):
                    assert len({tuple(p) for p in paths[i][rows[i] >= 0].tolist()}) == 1


def test_beam_search_finds_the_highest_scoring_path():
    codes, dec, ct = _tiny()
    u = torch.randn(6, 8)
    brute = all_scores(dec, u, ct)  # (6, docs) every document's path score, exhaustively
    x, tab = dec.query_state(u), dec.tables(ct)
    n_leaves = int(codes.is_leaf.sum())
    scores, rows = beam_search(dec, x, tab, ct, beam=n_leaves, k=codes.n_docs)  # wide enough to be exact
    order = torch.argsort(brute, dim=1, descending=True)
    assert torch.allclose(scores, brute.gather(1, order), atol=1e-5)
    assert (rows[:, 0] == brute.argmax(1)).all()  # the highest-scoring path is found
    # Narrower beams: every score returned is that document's true path score, and never above the best.
    for beam in (1, 3, 8):
        s, r = beam_search(dec, x, tab, ct, beam=beam, k=5)
        ok = r >= 0
        assert torch.allclose(s[ok], brute.gather(1, r.clamp(min=0))[ok], atol=1e-5)
        assert (s[:, 0] <= brute.max(1).values + 1e-5).all()
    # A beam of one leaf per level is greedy decoding: it ends in the leaf of the greedy choices.
    s, r, p = beam_search(dec, x, tab, ct, beam=1, k=1, with_paths=True)
    prefix = torch.zeros(6, dtype=torch.int64)
    for t in range(codes.levels):
        logits, cand = dec.child_logits(x, prefix, tab, ct)
        prefix = cand.gather(1, logits.argmax(1, keepdim=True))[:, 0]
        assert (p[:, 0, t] == prefix).all()


def test_prefix_aware_logits_depend_on_the_prefix():
    codes, dec, ct = _tiny()
    x = dec.query_state(torch.randn(4, 8))
    node = int(np.flatnonzero(codes.depth == 2)[0])  # a level-2 node: its children's logits, under its path
    above = int(codes.parent[node])  # the level-1 node above it, which is neither scored nor a child here
    prefix = torch.full((4,), node)
    before, cand = dec.child_logits(x, prefix, dec.tables(ct), ct)
    with torch.no_grad():
        dec.node_emb.weight[above] += torch.randn(dec.node_emb.weight.shape[1])  # change only the path above
    after, cand2 = dec.child_logits(x, prefix, dec.tables(ct), ct)
    assert torch.equal(cand, cand2)
    assert not torch.allclose(before, after, atol=1e-4)  # same children, same query: the prefix moved them
    # Both routes carry the prefix: the query state (P h) and the adapted output weights (A h).
    for route in ("prefix_in", "adapt"):
        _, d2, ct2 = _tiny()
        with torch.no_grad():
            other = "adapt" if route == "prefix_in" else "prefix_in"
            getattr(d2, other).weight.zero_()  # leave only ``route``
            getattr(d2, other).bias.zero_()
            b, _ = d2.child_logits(x, prefix, d2.tables(ct2), ct2)
            d2.node_emb.weight[above] += 1.0
            a, _ = d2.child_logits(x, prefix, d2.tables(ct2), ct2)
        assert not torch.allclose(a, b, atol=1e-4), route
    # Without either route the path above cannot matter: the control for the two checks above.
    _, d3, ct3 = _tiny()
    with torch.no_grad():
        for name in ("adapt", "prefix_in"):
            getattr(d3, name).weight.zero_()
            getattr(d3, name).bias.zero_()
        b, _ = d3.child_logits(x, prefix, d3.tables(ct3), ct3)
        d3.node_emb.weight[above] += 1.0
        a, _ = d3.child_logits(x, prefix, d3.tables(ct3), ct3)
    assert torch.allclose(a, b, atol=1e-6)


def test_imprinted_documents_are_searchable_and_change_no_trained_weight():
    codes, dec, ct = _tiny()
    before = {k: v.clone() for k, v in dec.state_dict().items()}
    leaves = np.flatnonzero(codes.is_leaf)[[0, 0, 3]]
    rows = codes.add(leaves)
    ct = CodeTensors.of(codes)
    u = torch.randn(6, 8)  # two inputs per new document
    owner = torch.tensor([0, 1, 2, 0, 1, 2])
    dec.imprint(u, torch.from_numpy(leaves)[owner], owner, 3, ct)
    after = dec.state_dict()
    for k, v in before.items():
        w = after[k][: v.shape[0]] if k == "doc_emb" else after[k]
        assert torch.equal(v, w), k  # nothing trained moved; doc_emb only grew
    assert after["doc_emb"].shape[0] == codes.n_docs == 63
    # A query equal to the new document's inputs finds it, on its assigned path.
    q = dec.query_state(u[[2, 5]].mean(0, keepdim=True))
    s, r, p = beam_search(dec, q, dec.tables(ct), ct, beam=int(codes.is_leaf.sum()), k=codes.n_docs, with_paths=True)
    hit = int(np.flatnonzero(r[0].numpy() == rows[2])[0])
    assert codes.is_path(p[0, hit].tolist()) and int(p[0, hit, -1]) == leaves[2]
    with pytest.raises(Exception, match="leaf node"):
        codes.add(np.array([0]))  # the root is no leaf


def _study(tmp_path, data_root, bert, out, *extra: str):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "benchmarks.quality", "--data-root", str(data_root), "--supervised", "tiny",
           "--base-model", str(bert), "--max-steps", "2", "--batch-size", "8", "--epochs", "2",
           "--out", str(out), "--work", str(tmp_path / "work"), "--no-progress", *extra]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)


def test_gr_arm_runs_through_the_quality_study(tiny_beir, tiny_bert, tmp_path):
    """A 2-step run of the gr arm (supervised on the dev split, and unsupervised) through benchmarks/quality.py,
    beside flat, with hce's paired test against it; then the saved model loads and searches the same."""
    import json

    from hce_train.gr.train import GenerativeRetriever

    out = tmp_path / "q.json"
    r = _study(tmp_path, tiny_beir.parent, tiny_bert, out, "--arms", "gr,hce", "--unsupervised", "tiny",
               "--unsup-arms", "gr", "--seeds", "0", "--dev-queries", "6", "--keep-models")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    sup = res["supervised"]
    dev = sup["dev"]["queries"]
    (run,) = sup["arms"]["gr"]["runs"]
    assert run["config"]["negatives"] == "gr" and run["config"]["holdout_queries"] == dev
    assert run["steps"] == 2 and run["indexing"]["steps"] == 2  # --max-steps caps both phases
    assert run["indexing"]["pairs_per_doc"] == 8 and run["config"]["gr"]["beam"] == 32
    assert sorted(run["per_query"]["ndcg@10"]) == dev and sorted(run["per_query"]["recall@100"]) == dev
    assert set(run["beams"]) == {"8", "32", "128"} and run["beams"]["32"]["ndcg@10"] == run["metrics"]["ndcg@10"]
    assert set(run["temperatures"]) == {"1", "2", "4"} and run["temperatures"]["1"] == run["beams"]["32"]
    assert run["config"]["gr"]["joint_decoder_lr"] == 1e-4 and run["indexing"]["pairs"] == 64 * 8
    assert [c["epoch"] for c in run["curve"]][0] == 0 and run["curve"][-1]["ndcg@10"] == run["metrics"]["ndcg@10"]
    assert run["tree"]["docs"] == 64 and run["config"]["branching"] == 32  # the tree every arm builds
    assert "hce-vs-gr" in sup["tests"]  # the report pairs it like any other arm
    assert sup["family"]["best_baseline"] in ("gr",)  # a baseline of the family, never an hce variant
    (urun,) = res["unsupervised"]["tiny"]["arms"]["gr"]["runs"]
    assert urun["config"]["mode"] == "unsupervised" and urun["steps"] == 2
    # The kept model reloads and gives the same ranking as the run's evaluation.
    model = GenerativeRetriever.load(tmp_path / "work" / "tiny-supervised-gr-s0")
    from hce_train.gr.evaluate import evaluate_gr

    again = evaluate_gr(model, tiny_beir, "train", dev)
    assert again["ndcg@10"] == pytest.approx(run["metrics"]["ndcg@10"], abs=1e-5)


def test_gr_study_commands_run_on_tiny_inputs(tiny_beir, tiny_bert, tiny_export, tmp_path):
    """benchmarks.gr's three commands end to end on the tiny fixture: added documents (gr and hce, 2 steps),
    latency on the model that run saved, and the paired table over a quality file."""
    import json

    from benchmarks import gr

    inc = tmp_path / "inc.json"
    gr.main(["incremental", "--data", str(tiny_beir), "--base-model", str(tiny_bert), "--max-steps", "2",
             "--work", str(tmp_path / "inc"), "--out", str(inc)])
    res = json.loads(inc.read_text())
    assert set(res["systems"]) == {"zero-shot", "gr-80-then-add", "hce-80-then-add"} and res["new_docs"] == 13
    g = res["systems"]["gr-80-then-add"]
    assert g["before_add"]["new"]["ndcg@10"] == 0 and g["add"]["added"] == 13  # unreachable until added
    assert g["metrics"]["new"]["recall@100"] > 0 and set(g["beams"]) == {"8", "32", "128"}
    assert res["systems"]["hce-80-then-add"]["add"]["added"] == 13
    assert set(res["new_document_queries"]) == set(res["systems"])
    gr.main(["incremental", "--data", str(tiny_beir), "--base-model", str(tiny_bert), "--max-steps", "2",
             "--work", str(tmp_path / "inc"), "--out", str(inc), "--resume"])  # everything done: nothing reruns
    assert json.loads(inc.read_text())["systems"]["gr-80-then-add"]["seconds"] == g["seconds"]

    lat = tmp_path / "lat.json"
    gr.main(["latency", "--model", g["model"], "--data", str(tiny_beir), "--dense-export", str(tiny_export),
             "--n", "10", "--repeats", "1", "--beams", "4,16", "--work", str(tmp_path / "lat"), "--out", str(lat)])
    cols = json.loads(lat.read_text())["columns"]
    assert set(cols["end_to_end"]) == {"dense_engine", "gr_beam4", "gr_beam16"} and set(cols["encode_only"]) == {
        "dense_engine", "gr"}
    assert all(s["p50_ms"] > 0 and s["n"] == 10 for c in cols.values() for s in c.values())

    q = tmp_path / "q.json"
    r = _study(tmp_path, tiny_beir.parent, tiny_bert, q, "--arms", "gr,flat", "--unsupervised", "none",
               "--seeds", "0", "--dev-queries", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    table = tmp_path / "table.json"
    gr.main(["table", "--from", str(q), "--out", str(table)])
    block = json.loads(table.read_text())["blocks"]["q:supervised"]
    assert set(block["arms"]) == {"gr", "flat", "zero_shot", "bm25"}
    assert {"gr-vs-flat:ndcg@10", "gr-vs-flat:recall@100", "gr-vs-zero_shot:recall@100"} <= set(block["tests"])
    assert all(t["p_holm"] >= t["p"] for t in block["tests"].values())
    with pytest.raises(SystemExit):
        gr.main(["table", "--from", str(tmp_path / "missing.json"), "--out", str(table)])

    # The final runs take the dev split's choice: the gr arm and search temperature with the best dev nDCG@10.
    choice = gr.dev_choice(q)
    runs = json.loads(q.read_text())["supervised"]["arms"]["gr"]["runs"]
    best = max(t["ndcg@10"] for t in runs[0]["temperatures"].values())
    assert choice["arm"] == "gr" and choice["dev"]["ndcg@10"] == best
    assert set(choice["candidates"]) == {"gr@T1", "gr@T2", "gr@T4"}
    final = tmp_path / "final.json"
    import subprocess
    import sys
    from pathlib import Path

    # As the queue runs it (python -m: the arm must reach the benchmarks.gr that benchmarks.quality imports).
    r = subprocess.run([sys.executable, "-m", "benchmarks.gr", "quality", "--dev", str(q), "--", "--data-root",
                        str(tiny_beir.parent), "--supervised", "tiny", "--base-model", str(tiny_bert), "--max-steps",
                        "2", "--batch-size", "8", "--arms", gr.DEV_CHOICE, "--unsupervised", "none", "--seeds", "0",
                        "--dev-queries", "6", "--eval-split", "test", "--out", str(final), "--work",
                        str(tmp_path / "work"), "--no-progress"], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(final.read_text())
    (run,) = res["supervised"]["arms"][gr.DEV_CHOICE]["runs"]
    assert run["config"]["gr"]["temperature"] == choice["temperature"] and run["config"]["dev_choice"]["arm"] == "gr"
    assert "dev" in run and gr.DEV_CHOICE in res["notes"][0]["note"]
    with pytest.raises(SystemExit):  # a file that is no dev-split file cannot choose
        gr.main(["quality", "--dev", str(final), "--", "--arms", gr.DEV_CHOICE])


def test_starting_encoder_embeddings_are_cached_per_texts_and_length(tiny_bert, tmp_path):
    from hce_train.gr.train import encode_cached
    from hce_train.model import HCEEncoder

    enc = HCEEncoder.build(str(tiny_bert))
    texts = ["alpha beta", "gamma delta epsilon"]
    first, secs, hit = encode_cached(enc, texts, 16, 8, False, "t", tmp_path)
    again, secs2, hit2 = encode_cached(enc, texts, 16, 8, False, "t", tmp_path)
    assert not hit and hit2 and secs2 == secs and np.array_equal(first, again)  # the first encode's seconds kept
    assert not encode_cached(enc, texts, 8, 8, False, "t", tmp_path)[2]  # another length: another entry
    assert not encode_cached(enc, texts[::-1], 16, 8, False, "t", tmp_path)[2]  # other texts (order included)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_label_smoothing_mixes_the_target_with_the_mean_of_the_valid_options():
    codes, dec, ct = _tiny()
    u, docs = torch.randn(5, 8), torch.arange(5) * 7
    tab = dec.tables(ct)
    plain = dec.path_log_probs(u, docs, ct, tab)
    full = dec.path_log_probs(u, docs, ct, tab, smoothing=1.0)  # the mean log-probability of each step's options
    x = dec.query_state(u)
    logits, cand = dec.child_logits(x, torch.zeros(5, dtype=torch.int64), tab, ct)  # the first step, by hand
    lp = logits.log_softmax(-1)
    want = torch.stack([lp[i][cand[i] >= 0].mean() for i in range(5)])  # padding (-inf) left out
    assert torch.allclose(full[:, 0], want, atol=1e-5)
    half = dec.path_log_probs(u, docs, ct, tab, smoothing=0.5)
    assert torch.allclose(half, 0.5 * plain + 0.5 * full, atol=1e-5)
