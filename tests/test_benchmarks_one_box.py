"""The one-box study (``index_scale --one-box``, issue 13) in its quick modes: tree, hnswlib, IVF storages and
memory options over a few thousand synthetic vectors, through ``main``, reading the results file it wrote."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hnswlib")

from helpers import read_result as read  # noqa: E402 - tests/ is on sys.path (conftest)


def test_index_scale_one_box_quick(tmp_path):
    """The 5M study's code path (``--one-box``) on 3,000 vectors: tree, index, save, load, truth, options."""
    pytest.importorskip("faiss")
    from benchmarks import index_scale as m
    from benchmarks.harness.synthetic import Mixture

    out = tmp_path / "one-box.json"
    assert m.main(["--quick", "--one-box", "3000", "--options-size", "2000", "--queries", "40", "--recall-queries",
                   "20", "--latency-queries", "10", "--clusters", "20", "--efs", "10,200", "--tmp", str(tmp_path),
                   "--ivf-nlist", "20", "--ivf-codes", "Flat;SQ8,RFlat", "--nprobes", "1,20", "--out", str(out)]) == 0
    res = read(out, "benchmarks/index_scale.py")["result"]
    ph = res["phases"]
    assert ph["tree_build"]["summary"]["docs"] == 3000 and ph["save"]["bytes"]["hnsw.bin"] > 3000 * 384 * 4
    assert all(ph[p]["peak_rss_mib"] > 0 for p in ("generate", "tree_build", "index_build", "save", "load"))
    assert [s["ef"] for s in res["sweep"]] == [10, 200] and res["sweep"][-1]["recall@10"] >= 0.99
    assert res["chosen_ef"] in (10, 200)
    # The reported peak covers every phase, not only those after the last per-phase reset of VmHWM.
    assert res["peak_rss_gib"] * 1024 >= max(p["peak_rss_mib"] for p in ph.values()) - 6
    assert res["peak_phase"] in (*ph, "ivf Flat", "ivf SQ8,RFlat", "last")
    ivf, sq8 = res["ivf"]  # IVF-Flat over the same 3,000: every cell probed is exact search
    assert ivf["codes"] == "Flat" and ivf["documents"] == 3000 and [r["nprobe"] for r in ivf["sweep"]] == [1, 20]
    assert ivf["sweep"][-1]["recall@10"] == 1.0 and ivf["chosen"]["nprobe"] in (1, 20) and ivf["sweep"][0]["p50_ms"] > 0
    # SQ8 codes re-ranked on fp32 copies: 4 x 10 candidates from all cells, then exact scores
    assert sq8["codes"] == "SQ8,RFlat" and sq8["k_factor"] == 4 and sq8["bytes_per_vector"] > 384 * 4
    assert sq8["sweep"][-1]["recall@10"] >= 0.99
    opts = res["memory_options"]
    assert opts["documents"] == 2000 and opts["hnswlib_fp32"]["recall@10"] >= 0.95
    assert opts["faiss_hnsw_fp16"]["recall@10"] >= 0.95
    assert "recall@10" in opts["milvus_lite_hnsw"] or "not installed" in opts["milvus_lite_hnsw"]["skipped"]
    mix = Mixture(384, 20, 0)  # blocks regenerate identically: the ground-truth pass sees the indexed vectors
    assert np.array_equal(mix.block(0, 100), mix.block(0, 100))
    assert not np.array_equal(mix.block(0, 100), mix.block(1, 100))
    assert np.array_equal(mix.matrix(150_000)[100_000:100_100], mix.block(1, 50_000)[:100])


def test_one_box_ivf_only_skips_tree_and_hnswlib(tmp_path):
    from benchmarks import index_scale as m

    out = tmp_path / "ivf-only.json"
    assert m.main(["--quick", "--one-box", "2000", "--queries", "30", "--recall-queries", "20", "--latency-queries",
                   "10", "--clusters", "20", "--ivf-only", "--ivf-nlist", "16", "--ivf-codes", "SQ8", "--nprobes",
                   "16", "--out", str(out)]) == 0
    res = read(out, "benchmarks/index_scale.py")["result"]
    assert res["phases"] == {} and "sweep" not in res and "chosen_ef" not in res
    (sq8,) = res["ivf"]  # one byte per dimension, every cell probed: only the 8-bit rounding is lost
    assert sq8["codes"] == "SQ8" and sq8["bytes_per_vector"] < 400 and sq8["sweep"][0]["recall@10"] >= 0.9
    # the peak covers the IVF build, whose own reset of VmHWM would otherwise hide it
    assert res["peak_rss_gib"] >= sq8["peak_rss_gib"] > 0 and res["peak_phase"] in ("ivf SQ8", "last")
    with pytest.raises(SystemExit, match="needs --ivf-nlist"):
        m.main(["--quick", "--one-box", "2000", "--ivf-only", "--out", str(tmp_path / "x.json")])


def test_one_box_hce_ivf_index_without_tree(tmp_path):
    """--index-type ivf-sq8: hce's own IVF-SQ8 kind built, saved, loaded and swept over nprobe via Index.search."""
    pytest.importorskip("faiss")
    from benchmarks import index_scale as m

    out = tmp_path / "hce-ivf.json"
    assert m.main(["--quick", "--one-box", "3000", "--queries", "30", "--recall-queries", "20", "--latency-queries",
                   "10", "--clusters", "20", "--index-type", "ivf-sq8", "--no-tree", "--ivf-nlist", "16",
                   "--ivf-codes", "", "--nprobes", "1,16", "--search-threads", "1,2", "--tmp", str(tmp_path),
                   "--out", str(out)]) == 0
    res = read(out, "benchmarks/index_scale.py")["result"]
    assert res["index_type"] == "ivf-sq8" and res["index_params"]["nlist"] == 16 and "ivf" not in res
    assert "tree_build" not in res["phases"] and {"ivf.faiss", "vectors.npy"} <= set(res["phases"]["save"]["bytes"])
    assert [(r["ef"], r["threads"]) for r in res["sweep"]] == [(1, 1), (1, 2), (16, 1), (16, 2)]
    assert res["sweep"][-1]["recall@10"] >= 0.99
    # every timed point carries its witness of an idle box (Linux: /proc/stat)
    assert all({"others_cpu_s", "steal_s"} <= set(r) for r in res["sweep"])
    assert res["chosen_ef"] in (1, 16)
    assert res["build_minutes_tree_plus_index"] == round(res["phases"]["index_build"]["seconds"] / 60, 1)  # no tree
    assert set(res["chosen_p50_ms_by_threads"]) == {"1", "2"} and all(res["chosen_p50_ms_by_threads"]["2"])
