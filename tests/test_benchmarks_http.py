"""benchmarks/http.py's arithmetic: the targets read from a level table, and the profile's stages."""

from __future__ import annotations

import pytest

http = pytest.importorskip("benchmarks.http")


def level(**systems):
    return {name: {"qps": q, "p50_ms": p50, "p99_ms": p99, "mean_ms": p50} for name, (q, p50, p99) in systems.items()}


def test_ratios_and_targets():
    levels = {"1": level(hce=(200, 5.0, 6.0), previous=(190, 4.9, 6.5), hce_batch1=(190, 5.5, 7.0)),
              "8": level(hce=(600, 12.0, 24.0), previous=(280, 25.0, 56.0), peer=(350, 20.0, 40.0),
                         hce_batch1=(500, 14.0, 30.0))}
    r = http.ratios(levels, {"best": 800.0, "best_at_b8": 700.0})
    assert set(r) == {"hce", "hce_batch1"}  # only the configurations measured
    hce = r["hce"]
    assert hce["qps_over_previous"] == pytest.approx(600 / 280, abs=1e-3)
    assert hce["qps_over_peer"] == pytest.approx(600 / 350, abs=1e-3)
    assert hce["qps_over_ceiling"] == 0.75 and hce["qps_over_ceiling_b8"] == pytest.approx(600 / 700, abs=1e-3)
    assert hce["p50_over_previous_at_1"] == pytest.approx(5.0 / 4.9, abs=1e-3)
    assert hce["targets_met"] == {"qps_over_previous": True, "qps_over_ceiling": True, "p99_ms": True,
                                  "qps_over_peer": True, "p50_over_previous_at_1": True}
    slow = r["hce_batch1"]["targets_met"]
    assert slow == {"qps_over_previous": False, "qps_over_ceiling": False, "p99_ms": False,
                    "qps_over_peer": False, "p50_over_previous_at_1": False}


def test_profile_stages_take_the_innermost_frame(tmp_path, monkeypatch):
    """A sample belongs to the stage of its innermost frame that names one: onnxruntime under the batcher is the
    encoder's; an executor thread with nothing to run, or a batch thread on its queue, is waiting."""
    raw = tmp_path / "raw.txt"
    ort = "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:266)"
    batch = "SearchBatcher._work (hce_serve/http/batcher.py:180)"
    worker = "_worker (concurrent/futures/thread.py:81)"
    waiting = f"SearchBatcher._serve (hce_serve/http/batcher.py:{http._line_of('batcher.py', 'self._queue.get()')})"
    raw.write_text(f"{worker};{batch};Engine.run_searches (hce_serve/engine.py:230);{ort} 6\n"
                   f"{worker};{batch};hits (hce_serve/http/wire.py:40) 1\n"
                   f"{worker} 1\n{waiting} 1\n"
                   "<module> (hce-serve:8);Runner.run (asyncio/runners.py:118) 1\n")
    shares = http.summarize_profile(raw)
    assert shares["encoder: onnxruntime"] == 0.6 and shares["answer rendering (orjson)"] == 0.1
    assert shares["threads waiting for work"] == 0.2 and shares["event loop (uvloop: I/O, parsing, its waits)"] == 0.1
    assert sum(shares.values()) == pytest.approx(1.0)


def test_http_quick(tiny_beir, tiny_export, tiny_bert, tmp_path, monkeypatch):
    """The study end to end on tiny inputs: hce, the previous commit and the peer served both query graphs without an
    error, with the ceiling, the ratios, the CPU columns and the int8 fidelity beside them (one level and three
    systems keep it short: the other systems are the same server with other flags)."""
    import importlib.util

    from benchmarks.harness import paths

    from helpers import read_result, with_stand_in_query_graph

    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")  # exports, embeddings and the study's work dir
    export = with_stand_in_query_graph(tiny_export, tmp_path / "export")
    out = tmp_path / "http.json"
    assert http.main(["--quick", "--data", str(tiny_beir), "--export", str(export), "--base-model", str(tiny_bert),
                      "--systems", "hce,previous,peer", "--levels", "8", "--requests", "6,24,24",
                      "--ceiling-seconds", "0.2", "--profile-seconds", "0", "--out", str(out)]) == 0
    result = read_result(out, "benchmarks/http.py")
    expected = {"hce", "previous"}
    if importlib.util.find_spec("sentence_transformers"):
        expected.add("peer")
    assert expected - {"previous"} <= set(result["systems"]) <= expected  # previous: where git has the commit
    assert set(result["graphs"]) == {"full", "shallow"}
    for g in result["graphs"].values():
        assert g["ceiling"]["best"] > 0 and set(g["levels"]) == {"8"}
        for level in g["levels"].values():
            assert set(level) == set(result["systems"])
            for row in level.values():
                assert row["errors_total"] == 0 and row["qps"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
                assert row["server_cpu_ms_per_request"] >= 0 and row["client_cpu_ms_per_request"] > 0
        assert g["levels"]["8"]["hce"]["requests_per_batch"] >= 1  # read from the server's /stats
        assert "qps_over_ceiling" in g["ratios"]["hce"] and set(g["ratios"]["hce"]["targets_met"])
        f = g["fidelity"]
        assert 0 <= f["alone"]["ndcg@10"] <= 1 and 0 <= f["batched_seed0"]["top10_overlap"] <= 1
    assert list((tmp_path / "cache" / "http").glob("hce-http-*")) == []  # the temporary index is gone
