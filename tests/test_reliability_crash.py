"""Short version of tests/reliability/crash.py: writers killed with SIGKILL lose no acknowledged write.

Store API, command line and HTTP server each run a few kill cycles; the published run does >= 200.
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
    assert res["docs_checks"] == 2 * res["cycles"]  # docs.sqlite compared with the index after every kill


def test_http_writer_killed_loses_nothing(tiny_export, tmp_path):
    res = crash.run("http", 1, tmp_path, export=tiny_export, seed=3)
    assert_clean(res)
    assert res["docs_checks"] == 2 * res["cycles"]


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
