"""``index build --ray``: the corpus encoded by Ray Data actors gives the index the one-process build gives
(the same ids in the same order, vectors within 1e-6), on a local Ray started here with two CPUs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from hce_serve.cli import main
from hce_serve.engine import Engine

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=128 * 2**20)
    try:
        yield ray
    finally:
        ray.shutdown()  # stops the raylet and workers this test started


def vectors(idx):
    with Engine.open(idx) as eng:
        ids = eng.ids()
        return ids, eng.store.index.get_vectors(ids), eng.stats()["live"]


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_ray_build_gives_the_same_ids_and_vectors(local_ray, tiny_export, tiny_beir, tmp_path, variant):
    from hce_serve.folder.ray_encode import RayOptions

    corpus = tiny_beir / "corpus.jsonl"
    # 64 documents in chunks of 16, handed to Ray 3 chunks at a time: two datasets, a window boundary inside
    Engine.build(tiny_export, corpus, tmp_path / "one", batch_size=16, variant=variant)
    Engine.build(tiny_export, corpus, tmp_path / "ray", batch_size=16, variant=variant,
                 ray=RayOptions(workers=2, window=3))
    ids_one, vec_one, live = vectors(tmp_path / "one")
    ids_ray, vec_ray, _ = vectors(tmp_path / "ray")
    assert live == 64 and ids_ray == ids_one  # same ids, same labels
    assert float(np.abs(vec_ray - vec_one).max()) <= 1e-6
    assert ray.is_initialized()  # a Ray the caller started is left running


def test_build_ray_from_the_command_line(local_ray, tiny_export, tiny_beir, tmp_path):
    res = CliRunner().invoke(main, ["index", "build", "--model", str(tiny_export), "--corpus",
                                    str(tiny_beir / "corpus.jsonl"), "--index", str(tmp_path / "idx"), "--ray",
                                    "--ray-workers", "2", "--batch-size", "32"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["live"] == 64
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["extra"]["built_from"]["ray"] is True


def test_missing_ray_is_one_line_and_exit_1(tiny_export, tiny_beir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    res = CliRunner().invoke(main, ["index", "build", "--model", str(tiny_export), "--corpus",
                                    str(tiny_beir / "corpus.jsonl"), "--index", str(tmp_path / "idx"), "--ray"])
    assert res.exit_code == 1
    assert res.output.strip() == "Error: ray is not installed; install it with: pip install 'hce[ray]'"
    assert not (tmp_path / "idx").exists()  # refused before anything was read or written


def test_ray_speedup_quick(local_ray, tiny_export, tiny_beir, tmp_path):
    """The study's quick mode on the tiny corpus: every system timed, the Ray build's vectors equal."""
    from benchmarks import ray_speedup

    out = tmp_path / "ray.json"
    assert ray_speedup.main(["--quick", "--export", str(tiny_export), "--corpus", str(tiny_beir / "corpus.jsonl"),
                             "--batch-size", "16", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["script"] == "benchmarks/ray_speedup.py" and res["docs"] == 64
    assert set(res["seconds"]) == {"one_process", "one_process_1t", "ray"} and all(
        len(s) == 1 and s[0] > 0 for s in res["seconds"].values())
    assert res["same_ids"] and res["max_abs_diff"] <= 1e-6
    assert res["speedup"]["ray_over_one_process"] > 0 and res["ray_startup_s"] == 0.0  # the test's Ray was reused
