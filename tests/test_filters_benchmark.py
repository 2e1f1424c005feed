"""benchmarks/filters.py's --quick path on a tiny collection: the numbers it publishes are the ones the
issue's target reads (recall@10 of the in-index filter against exact filtered search)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("hnswlib")

from benchmarks.harness import provenance  # noqa: E402


def test_filters_quick(tmp_path):
    from benchmarks import filters

    out = tmp_path / "filters.json"
    assert filters.main(["--quick", "--sizes", "6000", "--selectivity", "0.01,0.1,1.0", "--queries", "60",
                         "--latency-queries", "20", "--clusters", "30", "--ef-construction", "100", "--tmp",
                         str(tmp_path), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["script"] == "benchmarks/filters.py" and all(k in res for k in provenance.STAMP_KEYS)
    rows = {r["selectivity"]: r for r in res["sizes"][0]["selectivity"]}
    assert rows[0.01]["exact_scan"] and rows[0.01]["search"]["recall@10"] == 1.0  # few matches: an exact scan
    assert not rows[0.1]["exact_scan"] and rows[0.1]["search"]["recall@10"] >= 0.99  # the graph, filter inside
    assert rows[0.1]["graph"]["recall@10"] == rows[0.1]["search"]["recall@10"]  # the same path, forced
    assert rows[0.01]["post_filter"]["recall@10"] < 0.5  # filtering the unfiltered top-100 misses most
    assert rows[1.0]["matching"] == 6000 and rows[1.0]["search"]["recall@10"] >= 0.95
    assert all(r[name]["p50_ms"] > 0 for r in rows.values() for name in ("match", "search", "graph", "unfiltered"))
    assert (tmp_path / "filters-selectivity.png").is_file() and not list(tmp_path.glob("hce-filters-*"))
