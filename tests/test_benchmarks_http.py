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
