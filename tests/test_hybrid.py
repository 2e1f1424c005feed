"""Hybrid search through the Engine: the lexical part of an index folder, the three modes, and durability."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("Stemmer")

from hce_serve.engine import Engine  # noqa: E402
from hce_serve.errors import ConfigError, DataError  # noqa: E402

OLD_INDEX = Path(__file__).parent / "data" / "index-v0.1.0"
RARE = "zyxqwvorange"


def corpus(path: Path) -> Path:
    rows = [{"_id": f"d{i}", "title": f"topic {i % 7}", "text": f"common words about cells and proteins number {i}",
             "metadata": {"group": "a" if i % 2 else "b"}} for i in range(40)]
    rows.append({"_id": "rare", "title": "odd one", "text": f"the only document with {RARE} in it",
                 "metadata": {"group": "b"}})
    rows.append({"_id": "rare2", "title": "odd two", "text": f"{RARE} again, in group a", "metadata": {"group": "a"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def built(tiny_export, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hybrid")
    idx = root / "idx"
    Engine.build(tiny_export, corpus(root / "corpus.jsonl"), idx)
    return idx


@pytest.fixture
def engine(built, tmp_path):
    shutil.copytree(built, tmp_path / "idx")
    eng = Engine.open(tmp_path / "idx", writable=True)
    yield eng
    eng.close()


def ids(hits) -> list[str]:
    return [h.id for h in hits]


def test_a_new_index_has_a_lexical_part_and_searches_hybrid_by_default(engine):
    assert engine.search_defaults.mode == "hybrid"
    st = engine.stats()["lexical"]
    assert st["documents"] == 42 and st["language"] == "english"


def test_a_rare_token_is_found_by_lexical_and_hybrid(engine):
    assert set(ids(engine.search(RARE, k=5, mode="lexical"))) == {"rare", "rare2"}
    hyb = engine.search(RARE, k=5, mode="hybrid", explain=True)
    top = {h.id: h.explain for h in hyb}
    assert {"rare", "rare2"} <= top.keys()
    assert top["rare"]["lexical"]["rank"] in (1, 2)
    dense = engine.search(RARE, k=5, mode="dense", explain=True)
    assert all(h.explain["lexical"] is None and h.explain["dense"]["rank"] == r + 1 for r, h in enumerate(dense))


def test_hybrid_alpha_one_is_the_dense_order_and_zero_the_lexical_order(engine):
    q = f"cells proteins {RARE}"
    dense = ids(engine.search(q, k=5, mode="dense"))
    assert ids(engine.search(q, k=5, mode="hybrid", fusion="minmax", alpha=1.0))[:1] == dense[:1]
    lexical = ids(engine.search(q, k=2, mode="lexical"))
    assert ids(engine.search(q, k=2, mode="hybrid", fusion="minmax", alpha=0.0)) == lexical


def test_a_deleted_document_is_gone_from_both_sides(engine):
    engine.delete(["rare"])
    for mode in ("dense", "lexical", "hybrid"):
        assert "rare" not in ids(engine.search(RARE, k=50, mode=mode))
    assert ids(engine.search(RARE, k=5, mode="lexical")) == ["rare2"]


def test_a_filter_applies_to_both_sides(engine):
    for mode in ("lexical", "hybrid"):
        hits = engine.search(RARE, k=50, mode=mode, filter={"group": "a"})
        assert "rare" not in ids(hits) and all(h.metadata["group"] == "a" for h in hits)
    assert ids(engine.search(RARE, k=5, mode="lexical", filter={"group": "a"})) == ["rare2"]


def test_adds_and_replacements_reach_the_lexical_side(engine):
    engine.add([{"_id": "new", "title": "", "text": "quokkas of rottnest island"}])
    assert ids(engine.search("quokka", k=3, mode="lexical")) == ["new"]
    engine.add([{"_id": "new", "title": "", "text": "wallabies instead"}])
    assert ids(engine.search("quokka", k=3, mode="lexical")) == []
    assert ids(engine.search("wallaby", k=3, mode="lexical")) == ["new"]


def test_the_log_replays_into_the_lexical_postings_after_a_kill(built, tmp_path):
    shutil.copytree(built, tmp_path / "idx")
    engine = Engine.open(tmp_path / "idx", writable=True)
    engine.add([{"_id": "late", "title": "", "text": "platypus facts"}])
    engine.delete(["rare2"])
    engine.store.close(save=False)  # as a kill leaves it: the changes only in the log
    with Engine.open(tmp_path / "idx", writable=True) as again:
        assert ids(again.search("platypus", k=3, mode="lexical")) == ["late"]
        assert ids(again.search(RARE, k=5, mode="lexical")) == ["rare"]
        assert again.store.lexical.live_ids() == set(again.ids())
        again.save(force=True)  # merged into the next generation
    with Engine.open(tmp_path / "idx") as reader:
        assert ids(reader.search("platypus", k=3, mode="lexical")) == ["late"]
        assert reader.stats()["lexical"]["delta_documents"] == 0


def test_bad_mode_alpha_fusion_and_depth_are_refused(engine):
    with pytest.raises(DataError, match="mode must be one of"):
        engine.search("x", mode="sparse")
    with pytest.raises(DataError, match="alpha"):
        engine.search("x", mode="hybrid", alpha=1.5)
    with pytest.raises(DataError, match="fusion"):
        engine.search("x", fusion="max")
    with pytest.raises(DataError, match="depth"):
        engine.search("x", depth=0)


def test_an_old_folder_opens_dense_only_and_build_lexical_adds_the_part(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(OLD_INDEX, old)
    with Engine.open(old) as eng:
        assert eng.search_defaults.mode == "dense" and eng.stats()["lexical"] is None
        with pytest.raises(DataError, match="no lexical part"):
            eng.search("anything", mode="lexical")
    with Engine.open(old, writable=True) as eng:
        if not eng.stores_documents:
            with pytest.raises(Exception, match="stores no documents"):
                eng.store.build_lexical()
            return
        eng.store.build_lexical()
    with Engine.open(old) as eng:
        assert eng.stats()["lexical"]["documents"] == len(eng)


def test_no_lexical_builds_a_dense_only_folder(tiny_export, tmp_path):
    idx = tmp_path / "dense"
    Engine.build(tiny_export, corpus(tmp_path / "c.jsonl"), idx, lexical=False)
    with Engine.open(idx) as eng:
        assert eng.search_defaults.mode == "dense" and eng.stats()["lexical"] is None
    with pytest.raises(ConfigError, match="needs the lexical part"):
        Engine.build(tiny_export, tmp_path / "c.jsonl", tmp_path / "x", lexical=False, search={"mode": "hybrid"})


def test_stored_search_defaults_are_used(tiny_export, tmp_path):
    idx = tmp_path / "lex"
    Engine.build(tiny_export, corpus(tmp_path / "c.jsonl"), idx, search={"mode": "lexical"})
    with Engine.open(idx) as eng:
        assert eng.search_defaults.mode == "lexical"
        assert set(ids(eng.search(RARE, k=5))) == {"rare", "rare2"}


def test_a_new_index_searches_like_an_explicit_hybrid_dbsf_at_alpha_half(built):
    """The built-in default (hce_serve.defaults, chosen by benchmarks.hybrid) spelled out literally: a change of
    default must be a deliberate change of this test too."""
    with Engine.open(built) as eng:
        d = eng.search_defaults
        assert (d.mode, d.fusion, d.alpha) == ("hybrid", "dbsf", 0.5)
        for q, flt in ((RARE, None), ("cells and proteins number 3", None), (f"topic 4 {RARE}", {"group": "a"})):
            default = eng.search(q, k=8, filter=flt, explain=True)
            explicit = eng.search(q, k=8, filter=flt, mode="hybrid", fusion="dbsf", alpha=0.5, explain=True)
            assert len(default) == 8 and default == explicit  # ids, fused scores, stored fields and explain
            assert all(h.explain["fused"] == h.score for h in default)  # fused scores, not one side's
            # the explicit settings do act, so the equality above is not that of two ignored arguments
            other = eng.search(q, k=8, filter=flt, mode="hybrid", fusion="rrf", alpha=0.5)
            assert [h.score for h in other] != [h.score for h in default]


# ---- HTTP and CLI -------------------------------------------------------------------------------------
def test_http_takes_mode_alpha_and_explain_and_refuses_bad_values_with_422(engine):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from hce_serve.http import create_app

    with TestClient(create_app(engine)) as c:
        r = c.post("/search", json={"query": RARE, "k": 5, "mode": "lexical"})
        assert r.status_code == 200 and {h["id"] for h in r.json()["hits"]} == {"rare", "rare2"}
        r = c.post("/search", json={"query": RARE, "k": 5, "mode": "hybrid", "alpha": 0.3, "explain": True})
        hit = {h["id"]: h for h in r.json()["hits"]}["rare"]
        assert hit["explain"]["lexical"]["rank"] in (1, 2) and "fused" in hit["explain"]
        assert c.get("/search", params={"q": RARE, "mode": "lexical", "k": 2}).status_code == 200
        for bad in ({"mode": "sparse"}, {"alpha": 1.5}, {"alpha": -0.1}, {"fusion": "max"}, {"depth": 0}):
            assert c.post("/search", json={"query": "x", **bad}).status_code == 422, bad
        assert c.get("/search", params={"q": "x", "mode": "nope"}).status_code == 422


def test_cli_mode_and_alpha_and_build_lexical(built, tiny_export, tmp_path):
    from click.testing import CliRunner

    from hce_serve.cli import main

    def cli(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    res = cli("search", "--index", built, "--mode", "lexical", "--json", "--k", "2", RARE)
    assert res.exit_code == 0, res.output
    assert {h["id"] for h in json.loads(res.output)["hits"]} == {"rare", "rare2"}
    res = cli("search", "--index", built, "--mode", "hybrid", "--explain", RARE)
    assert res.exit_code == 0 and "lexical #" in res.output
    assert cli("search", "--index", built, "--mode", "sparse", "x").exit_code == 2
    assert cli("search", "--index", built, "--alpha", "1.5", "x").exit_code == 2
    dense = tmp_path / "dense"
    assert cli("index", "build", "--model", tiny_export, "--corpus", corpus(tmp_path / "c.jsonl"), "--index", dense,
               "--no-lexical").exit_code == 0
    res = cli("search", "--index", dense, "--mode", "lexical", "x")
    assert res.exit_code == 1 and "no lexical part" in res.output and "Traceback" not in res.output
    res = cli("index", "build-lexical", "--index", dense)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["lexical"]["documents"] == 42
    res = cli("search", "--index", dense, "--mode", "lexical", "--json", RARE)
    assert {h["id"] for h in json.loads(res.output)["hits"]} == {"rare", "rare2"}


@pytest.mark.parametrize("background", [False, True], ids=["inline", "beside-the-encoder"])
def test_hybrid_gives_the_same_hits_with_the_lexical_side_on_its_own_thread(built, monkeypatch, background):
    """A large index runs hybrid's lexical side on a lexical thread while the query is encoded; the hits are the
    ones the inline order gives, and a dense-only folder still refuses before anything is encoded."""
    from hce_serve import defaults

    monkeypatch.setattr(defaults, "LEXICAL_BACKGROUND_MIN_POSTINGS", 0 if background else 10**12)
    with Engine.open(built) as eng:
        got = [[(h.id, round(h.score, 6)) for h in eng.search(q, k=5, mode="hybrid")]
               for q in ("proteins and cells", f"topic 3 {RARE}", "zzz unknown")]
    monkeypatch.setattr(defaults, "LEXICAL_BACKGROUND_MIN_POSTINGS", 10**12)
    with Engine.open(built) as eng:
        want = [[(h.id, round(h.score, 6)) for h in eng.search(q, k=5, mode="hybrid")]
                for q in ("proteins and cells", f"topic 3 {RARE}", "zzz unknown")]
    assert got == want and any(got)


def test_hybrid_on_a_dense_only_folder_refuses_before_encoding(tiny_export, tmp_path, monkeypatch):
    idx = tmp_path / "dense"
    Engine.build(tiny_export, corpus(tmp_path / "corpus.jsonl"), idx, lexical=False)
    with Engine.open(idx) as eng:
        monkeypatch.setattr(eng, "query_vectors", lambda texts: pytest.fail("encoded before refusing"))
        with pytest.raises(DataError, match="no lexical part"):
            eng.search("anything", mode="hybrid")


def test_the_latency_study_times_every_arrangement_of_the_lexical_side(built):
    """benchmarks.hybrid_scale.mode_latency: every mode and arrangement, with wall and process CPU, and the
    engine's thresholds left as they were."""
    from benchmarks.hybrid_scale import mode_latency
    from hce_serve import defaults

    before = (defaults.LEXICAL_BACKGROUND_MIN_POSTINGS, defaults.COMPILED_TOPK_SLICE_MIN_POSTINGS)
    with Engine.open(built, query_cache=0) as eng:
        lat = mode_latency(eng, ["proteins and cells", f"topic 3 {RARE}"], 10, {"fusion": "dbsf", "alpha": 0.5})
    assert before == (defaults.LEXICAL_BACKGROUND_MIN_POSTINGS, defaults.COMPILED_TOPK_SLICE_MIN_POSTINGS)
    for m in ("dense", "lexical", "hybrid", "hybrid_inline", "lexical_whole"):
        assert lat[m]["p50_ms"] > 0 and lat[m]["process_cpu_p50_ms"] > 0, m
    assert lat["hybrid_over_dense_p50"] > 0 and lat["hybrid_inline_over_dense_process_cpu_p50"] > 0
