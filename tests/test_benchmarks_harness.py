"""The benchmark harness itself: interleaved timing, the loopback server and load client, the export cache."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("hnswlib")

from benchmarks.harness import resources, timing  # noqa: E402


def test_timed_interleaves_the_systems_in_rounds():
    calls: list[tuple[str, int]] = []
    timings = timing.timed({"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(("b", i))},
                          n=20, repeats=2, warmup=0)
    assert calls[:4] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # rounds of n/rounds calls, systems in turn
    assert {k: len(t.samples) for k, t in timings.items()} == {"a": 40, "b": 40}
    stats = timings["a"].stats()
    assert stats["n"] == 20 and stats["repeats"] == 2 and 0 < stats["p50_ms"] <= stats["p99_ms"]
    warm: list[int] = []
    timing.timed({"w": warm.append}, n=5, warmup=3, rounds=5)
    assert warm == [0, 1, 2, 0, 1, 2, 3, 4]  # untimed warm-up calls first


def test_thread_cpu_counts_work_not_waiting():
    """The thread CPU column is what keeps a timing honest on a shared box: a call that sleeps has wall time
    and next to no CPU time, a call that computes has both."""
    st = timing.timed({"sleep": lambda i: time.sleep(0.003), "busy": lambda i: sum(range(30_000))},
                      n=10, warmup=0, rounds=2)
    sleep, busy = st["sleep"].stats(), st["busy"].stats()
    assert sleep["p50_ms"] >= 3 and sleep["thread_cpu_p50_ms"] < 1
    assert busy["thread_cpu_p50_ms"] > 0.05 and busy["thread_cpu_p50_ms"] <= busy["p99_ms"] * 1.5


def test_others_cpu_counts_another_process_and_not_this_one():
    """``others_cpu`` is the witness that a timing ran on an idle box: a child burning CPU must show up in it
    (whatever else runs, it can only add), and this process's own work is subtracted out."""
    before = resources.cpu_snapshot()
    if before is None:
        pytest.skip("needs /proc/stat")
    child0 = sum(os.times()[2:4])
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                    "while time.process_time() - t < 0.4: pass"], check=True)
    child = sum(os.times()[2:4]) - child0  # the child's CPU seconds
    seen = resources.others_cpu(before)
    assert child >= 0.35 and seen["others_cpu_s"] >= child - 0.05
    before = resources.cpu_snapshot()
    own0 = sum(os.times()[:2])
    while sum(os.times()[:2]) - own0 < 0.4:  # this process's own 0.4 s, which must not count as others'
        pass
    after = resources.cpu_snapshot()
    busy = after[0] - before[0]  # everything the machine ran meanwhile, this process included
    assert resources.others_cpu(before)["others_cpu_s"] <= max(0.0, busy - 0.35) + 0.05


def test_no_import_circle_in_benchmarks():
    """Studies import the harness and each other in one direction: a circle (index_scale -> one_box ->
    memory_options -> index_scale once) makes a module's names depend on which one was imported first.
    Imports inside functions count too: they only postpone the circle."""
    root = Path(__file__).resolve().parents[1]
    mods = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (root / "benchmarks").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("benchmarks"):
                deps.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                            for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
        deps.discard(name)
    assert graph["benchmarks.memory_options"] and graph["benchmarks.index_scale"]  # the parse found imports
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            assert state.get(d) != 1, "import circle: " + " -> ".join([*path[path.index(d):], d])
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_percentiles_and_rate():
    p = timing.percentiles([0.001, 0.002, 0.003, 0.004])
    assert p["n"] == 4 and p["mean_ms"] == 2.5 and p["p50_ms"] == 2.5
    assert timing.median_stats([[0.001] * 5, [0.003] * 5])["p50_ms"] == 2.0
    assert 0 < timing.rate(lambda: sum(range(1000)), items=10, repeats=3) < 1e9


def test_loopback_server_and_load_client(tiny_export, tmp_path):
    """The lean client parses keep-alive answers (JSON bodies, error statuses) like a real client."""
    from benchmarks.loopback import Connection, run_load, sequential, start_server
    from hce_serve.encoder import Encoder
    from hce_serve.folder.store import IndexStore
    from hce_serve.index.index import Index
    from hce_serve.options import IndexParams

    enc = Encoder(tiny_export, threads=1)
    index = Index(enc.dim, IndexParams(), capacity=8)
    index.add([f"d{i}" for i in range(8)], enc.encode_documents([f"protein fold {i}" for i in range(8)]))
    IndexStore.create(tmp_path / "idx", index, tiny_export)

    async def one(port: int) -> tuple:
        c = await Connection(port).open()
        try:
            ok = await c.request("POST", "/search", {"query": "protein", "k": 3})
            bad = await c.request("POST", "/search", {"query": "", "k": 3})
            stats = await c.request("GET", "/stats")  # same connection, no body
            missing = await c.request("DELETE", "/documents/nope")
        finally:
            c.close()
        return ok, bad, stats, missing

    with start_server(tmp_path / "idx", ["--threads", "1"]) as server:
        ok, bad, stats, missing = asyncio.run(one(server.port))
        res = asyncio.run(run_load(server.port, [{"query": "protein", "k": 5}, {"query": "", "k": 5}], 2, 10))
        seq = asyncio.run(sequential(server.port, [{"query": "fold", "k": 2}], 4))
    assert ok[0] == 200 and len(json.loads(ok[1])["hits"]) == 3
    assert bad[0] == 400 and "detail" in json.loads(bad[1])
    assert stats[0] == 200 and json.loads(stats[1])["live"] == 8
    assert missing[0] == 404
    assert res["status"] == {200: 5, 400: 5} and len(res["latencies"]) == 10 and res["bad_bodies"] == 0
    assert len(seq) == 4 and all(s > 0 for s in seq)
    assert server.proc.poll() is not None  # stopped on leaving the block


def test_export_cache_is_invalidated_by_a_new_int8_recipe(tiny_bert, tmp_path, monkeypatch):
    """A cached benchmark export is reused only for the same source *and* the same default int8 recipe:
    one made before the recipe changed once served stale numbers under the new recipe's name."""
    import hce_export.api
    from benchmarks import encoders
    from hce_export import quantize

    calls = []
    real_export = hce_export.api.export
    monkeypatch.setattr(hce_export.api, "export", lambda *a, **k: calls.append(1) or real_export(*a, **k))
    first = encoders.ensure_export("tiny", tiny_bert, root=tmp_path)
    assert first == tmp_path / "tiny" and encoders.ensure_export("tiny", first) == first  # an export is itself
    assert encoders.ensure_export("tiny", tiny_bert, root=tmp_path) == first and len(calls) == 1  # cached
    real_settings = quantize.settings_for
    flipped = not real_settings().keep_ffn_out  # a recipe other than this machine's default
    monkeypatch.setattr(quantize, "settings_for",
                        lambda *a, **k: real_settings(*a, **{**k, "keep_ffn_out": flipped}))
    assert encoders.ensure_export("tiny", tiny_bert, root=tmp_path) == first and len(calls) == 2  # re-exported


def test_int8_study_on_vnni_the_default_is_all_int8_and_ffn_fp32_is_its_own_graph(tiny_bert, tmp_path, monkeypatch):
    from benchmarks import int8_study
    from hce_serve import cpu

    monkeypatch.setattr(cpu, "int8_isa", lambda: "avx512-vnni")
    folders, recipes = int8_study.build_graphs(tiny_bert, tmp_path / "work", ["default", "ffn-fp32", "all"])
    assert folders["all"] == folders["default"] == folders["fp32"] != folders["ffn-fp32"]
    assert recipes["default"]["keep_ffn_out"] is False and recipes["default"]["excluded_nodes"] == []
    assert recipes["ffn-fp32"]["keep_ffn_out"] is True and len(recipes["ffn-fp32"]["excluded_nodes"]) == 2
