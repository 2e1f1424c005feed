"""Short version of tests/reliability/crash.py: writers killed with SIGKILL lose no acknowledged write.

Store API, command line and HTTP server each run a few kill cycles on folders with stored documents and the
lexical part; the published run does >= 200. After every kill the vectors, docs.sqlite and the lexical postings
must hold the same live ids, and the postings each live document's acknowledged text.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("hnswlib")

from reliability import crash, ledger  # noqa: E402


def assert_clean(res: dict) -> None:
    assert res["failed_loads"] == 0, res["examples"]
    assert res["lost_acked_writes"] == 0, res["examples"]
    assert res["deleted_ids_returned"] == 0
    assert res["docs_index_mismatch"] == 0, res["examples"]
    assert res["lexical_index_mismatch"] == 0 and res["lexical_lost_acked_writes"] == 0, res["examples"]
    assert res["lexical_stale_postings"] == 0 and res["lexical_deleted_ids_returned"] == 0, res["examples"]
    # three id sets compared as a reader sees them and after the next writer's open, in every cycle
    assert res["docs_checks"] == res["lexical_checks"] == 2 * res["cycles"]
    assert res["leftovers_after_writer_open"] == 0
    assert res["writer_errors"] == 0, res["examples"]
    assert res["killed_mid_write"] >= 1  # the kills really landed while the writer was running


def test_store_writer_killed_loses_nothing(tmp_path):
    res = crash.run("store", 6, tmp_path, seed=1)
    assert_clean(res)
    assert res["cycles"] == 6 and res["acked_mutations"] > 6


def test_cli_writer_killed_loses_nothing(tiny_export, tmp_path):
    res = crash.run("cli", 2, tmp_path, export=tiny_export, seed=2)
    assert_clean(res)


def test_http_writer_killed_loses_nothing(tiny_export, tmp_path):
    res = crash.run("http", 1, tmp_path, export=tiny_export, seed=3)
    assert_clean(res)


def test_checker_catches_a_lost_write(tmp_path):
    """The harness itself: an acknowledged add that is not in the index must be reported."""
    exp = crash._initial_store(tmp_path / "idx", 16)
    exp.apply("add", ["d1"], [7])  # acknowledged, but never written
    tally = ledger.Tally(cycles=1)
    ledger.check(tmp_path / "idx", exp, tally, 16, vectors=True)
    assert any("d1" in x for x in tally.lost)


def test_checker_catches_documents_that_disagree_with_the_index(tiny_export, tmp_path):
    """The harness itself: docs.sqlite changed behind the index's back (one document swapped for a stranger,
    one carrying another version) must be reported, with equal counts so the store's own open check passes."""
    import sqlite3

    exp = crash._initial_engine(tmp_path / "idx", tiny_export)
    with sqlite3.connect(tmp_path / "idx" / "docs.sqlite") as db:
        db.execute("UPDATE docs SET id = 'stranger' WHERE id = 'd2'")
        db.execute("UPDATE docs SET text = text || ' v9' WHERE id = 'd4'")
    tally = ledger.Tally(cycles=1)
    ledger.check(tmp_path / "idx", exp, tally, 32, vectors=False)
    assert tally.docs_checks == 2 and len(tally.docs_mismatch) == 2
    assert all("'stranger'" in m and "'d2'" in m for m in tally.docs_mismatch)
    assert any("d4 expected version [0] found 9" in x for x in tally.lost)
    assert any("d2 expected version [0] found no stored document" in x for x in tally.lost)


def _tamper_postings(folder, change) -> None:
    """Change the lexical part behind the index's back and save it as the folder's generation."""
    from hce_serve.folder.store import IndexStore

    with IndexStore.open(folder, writable=True) as s:
        change(s.lexical)
        s.save(force=True)


def test_checker_catches_postings_that_disagree_with_the_index(tmp_path):
    """The harness itself: postings that lost one document for a stranger (equal counts, so the folder still
    opens), and postings holding another version of a document, must be reported on every side they show."""
    folder = tmp_path / "idx"
    exp = crash._initial_store(folder, 16)

    def change(lex):
        lex.delete(["d2"])
        lex.add([("stranger", ledger.doc_text("stranger", 5)), ("d4", ledger.doc_text("d4", 9))])
    _tamper_postings(folder, change)
    exp.touched.add(9)  # the checker probes the version terms a cycle touched: 9 must find nothing live
    tally = ledger.Tally(cycles=1)
    ledger.check(folder, exp, tally, 16, vectors=True)
    assert tally.lexical_checks == 2 and len(tally.lexical_mismatch) == 2
    assert all("'stranger'" in m and "'d2'" in m for m in tally.lexical_mismatch)
    assert any("d2 holds version 0" in x for x in tally.lexical_lost)
    assert any("d4 holds version 0" in x for x in tally.lexical_lost)
    assert any("'v9' found d4, which holds version 0" in x for x in tally.lexical_stale)
    assert tally.lexical_deleted_returned > 0  # 'stranger' is not live in the index, and its words find it
    assert tally.lost == [] and tally.docs_mismatch == []  # vectors and documents were left alone


def test_checker_catches_a_deleted_document_left_in_the_postings(tmp_path):
    """The harness itself: a delete that reached the vectors and the documents but not the postings, and one
    that reached only the postings (equal counts again, so the next writer's open goes through)."""
    from hce_serve.folder.store import IndexStore

    folder = tmp_path / "idx"
    exp = crash._initial_store(folder, 16)
    with IndexStore.open(folder, writable=True) as s:
        s.delete(["d6"])
        s.lexical.add([("d6", ledger.doc_text("d6", 0))])
        s.lexical.delete(["d10"])
        s.save(force=True)
    exp.apply("delete", ["d6"], None)
    tally = ledger.Tally(cycles=1)
    ledger.check(folder, exp, tally, 16, vectors=True)
    assert len(tally.lexical_mismatch) == 2
    assert all("['d6'] the index lacks" in m and "['d10'] the postings lack" in m for m in tally.lexical_mismatch)
    assert tally.lexical_stale == ["cycle 1: a lexical search for 'v0' found d6, which holds version none (deleted)"]
    assert tally.lexical_lost == ["cycle 1: d10 holds version 0 but a lexical search for 'v0' does not find it"]
    assert tally.lexical_deleted_returned > 0  # d6's words find it


def test_long_mode_writes_its_stamped_section(tmp_path):
    """The command line behind the published figures: its section names this harness and carries the stamp."""
    out = tmp_path / "reliability.json"
    out.write_text(json.dumps({"load": {"script": "tests/reliability/loadtest.py"}}))  # another harness's section
    assert crash.main(["--modes", "store", "--cycles", "2", "--seed", "4", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["load"] == {"script": "tests/reliability/loadtest.py"}  # left alone
    section = written["crash"]
    assert section["script"] == "tests/reliability/crash.py" and section["commit"] and section["machine"]["cpu"]
    assert section["total"]["cycles"] == 2 and section["total"]["lost_acked_writes"] == 0
    assert section["total"]["lexical_checks"] == 4 and section["total"]["lexical_index_mismatch"] == 0


def test_resume_keeps_the_finished_modes(tmp_path, monkeypatch):
    """A killed long run goes on where it stopped: --resume keeps a finished mode (same cycles and seed)."""
    out = tmp_path / "reliability.json"
    assert crash.main(["--modes", "store", "--cycles", "1", "--seed", "5", "--out", str(out)]) == 0
    first = json.loads(out.read_text())["crash"]["modes"][0]

    def fail(*a, **kw):
        raise AssertionError("a finished mode was run again")
    monkeypatch.setattr(crash, "run", fail)
    assert crash.main(["--modes", "store", "--cycles", "1", "--seed", "5", "--out", str(out), "--resume"]) == 0
    assert json.loads(out.read_text())["crash"]["modes"] == [first]
    with pytest.raises(AssertionError, match="run again"):  # another seed is another run
        crash.main(["--modes", "store", "--cycles", "1", "--seed", "6", "--out", str(out), "--resume"])
