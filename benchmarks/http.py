"""HTTP serving throughput (issue 32): ``hce-serve http`` against the encoder's own ceiling, the previous serving
path and a hand-written peer, all on one SciFact index, interleaved in one run.

    python -m benchmarks.http --quick         # smoke run: 1,000 documents, few requests, one round
    python -m benchmarks.http [--resume]      # SciFact (5,183 documents), both query graphs, 3 rounds

Systems, each a server process on 127.0.0.1 (the load comes from this process: ``benchmarks.loopback``'s lean
asyncio keep-alive client, on the same two cores, which the results say):

- ``hce``: ``hce-serve http`` as it ships (micro-batching, the fast lane, orjson), one process;
- ``hce_workers2``: the same with ``--workers 2`` (two read-only processes on one socket);
- ``hce_nobatch``: the same with ``--max-batch-wait 0`` (micro-batching off), to show what batching adds;
- ``hce_batch1``: the same with ``--batch-threads 1`` (one batch at a time instead of one per core);
- ``previous``: ``hce-serve http`` of commit ``--previous`` (the one before this work), its own copy of
  ``hce_serve`` (``git archive``) on ``PYTHONPATH``, same index folder (written by that commit's code);
- ``peer``: ``benchmarks/http_peer.py``, FastAPI + sentence-transformers ONNX int8 + numpy search: what a
  user would write by hand. It has one query graph (the full model) and joins both graphs' rounds.

Every hce server runs with the query cache off (the requests cycle through the test queries; a cached query
skips the encoder) and 1 onnxruntime thread per call (the default). Requests: ``{"query": q, "k": 10}``, the
stored title, text and metadata in each hit (the default fields).

Per query graph (full; shallow, the distilled L=2 graph, when the export has one): first the ceiling, the
encoder alone on both cores with nothing else running (two threads with a 1-thread session each, and one
2-thread session; batches of 8 and 32; the best is the ceiling); then each level (1, 8, 32 requests in
flight) runs every system in rounds, in an order rotated each round, and reports the median round's QPS, p50
and p99, with each round's server and client CPU per request (and, for a one-process hce server, the requests
per encoder batch, from its ``/stats``). Two seconds separate two systems' turns, so that the previous one's
threads have settled; the peer gets a quarter of the requests under load, where it is 10-50x slower. Ratios and
the targets are read at 8 in flight; the 1-in-flight target compares p50 with the previous path's.

Where the time goes (``profile``): py-spy samples the ``hce`` server under 8 requests in flight after the timed
levels, and the samples are sorted into stages by the deepest frame that names one (``STAGES``).

Also measured (``fidelity``): int8's dynamic quantization scales a whole encoder call's activations together,
so a query's embedding depends slightly on the queries batched with it. nDCG@10 and top-10 overlap of the test
queries encoded alone and in random batches of 8, by ``Engine.run_searches``.

The shallow graph: an L=2 query encoder distilled from all-MiniLM-L6-v2 on SciFact for one epoch
(``hce-train distill-query``, then ``hce-export onnx --quantize``), made once and cached under
runs/bench/http; what the graph costs does not depend on how long it trained. ``--quick`` uses it only when it
is already there. ``--resume`` keeps the levels the file holds (same settings) and runs the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import peers
from benchmarks.encoders import base_model_path, encode, ensure_export
from benchmarks.harness import cli, paths, provenance, timing
from benchmarks.loopback import Server, free_port, run_load, sequential
from hce_serve import cpu

log = logging.getLogger(__name__)
PREVIOUS = "79e78b5"  # the last commit before micro-batching: hce-serve http as it served before this work
K = 10
LEVELS = (1, 8, 32)
SYSTEMS = ("hce", "hce_workers2", "hce_nobatch", "hce_batch1", "previous", "peer")
HCE_FLAGS = {"hce": [], "hce_workers2": ["--workers", "2"], "hce_nobatch": ["--max-batch-wait", "0"],
             "hce_batch1": ["--batch-threads", "1"]}
DISTILL = ["--layers", "2", "--epochs", "1"]  # the graph's cost depends on L, not on the training length
def _line_of(module: str, text: str) -> int:
    """The line of hce_serve/http/``module`` holding ``text`` (py-spy's frames carry line numbers)."""
    src = (paths.ROOT / "hce_serve" / "http" / module).read_text().splitlines()
    return next((i for i, line in enumerate(src, 1) if text in line), 0)


# Stages of a request for the profile: a sample goes to the first stage, from the innermost frame outwards,
# whose pattern is in a frame ("function (file:line)" as py-spy writes it).
STAGES = (
    ("encoder: onnxruntime", ("onnxruntime_inference_collection.py",)),
    ("encoder: tokenizer, padding, query cache", ("hce_serve/encoder.py", "hce_serve/qcache.py")),
    ("index search (hnswlib)", ("hce_serve/index/",)),
    ("stored documents (SQLite)", ("hce_serve/folder/docstore.py",)),
    ("engine and search modes", ("hce_serve/engine.py", "hce_serve/lexical/", "hce_serve/folder/store.py",
                                 "hce_serve/checks.py")),
    ("answer rendering (orjson)", ("hce_serve/http/wire.py",)),
    # the innermost frame of a thread waiting for work: a batch thread on its queue, a thread-pool thread idle
    ("threads waiting for work", (f"hce_serve/http/batcher.py:{_line_of('batcher.py', 'self._queue.get()')})",
                                  "_worker (", "Condition.wait", "Queue.get", "Event.wait")),
    ("batcher and thread hand-offs", ("hce_serve/http/batcher.py", "_chain_future", "Future.set_result",
                                      "ThreadPoolExecutor.submit", "run_in_executor")),
    ("HTTP: fast lane, FastAPI, uvicorn", ("hce_serve/http/", "fastapi/", "starlette/", "uvicorn/protocols",
                                           "uvicorn/middleware", "pydantic")),
    # uvloop's loop is C under one Python frame: socket I/O and HTTP parsing, but also its epoll waits and the
    # time the loop thread waits for the GIL, which py-spy cannot tell apart
    ("event loop (uvloop: I/O, parsing, its waits)", ("runners.py", "uvicorn/")),
)
COOL_DOWN = 2.0  # seconds between two systems' turns
TARGETS = {"qps_over_previous": 2.0, "qps_over_ceiling": 0.70, "p99_ms": 25.0, "qps_over_peer": 1.5,
           "p50_over_previous_at_1": 1.05}


# ---- what is served ---------------------------------------------------------------------------------------
def work_dir() -> Path:
    """This study's cache: the distilled pair, the previous commit's tree, the temporary index, the profiles."""
    return paths.CACHE / "http"


def shallow_export(data_dir: Path, base: Path, name: str, build: bool) -> Path | None:
    """The base model with a distilled L=2 query graph, exported as ``name`` (cached); None when absent and not
    ``build``."""
    model, export = work_dir() / name, paths.CACHE / "exports" / name
    stamp = export / ".http-bench"
    recipe = json.dumps({"distill": DISTILL, "data": str(data_dir.resolve()), "source": str(base.resolve())})
    if stamp.is_file() and stamp.read_text().strip() == recipe:
        return export
    if not build:
        return None
    log.info("distilling the shallow query encoder (%s) and exporting it to %s", " ".join(DISTILL), export)
    subprocess.run([*cli.tool_argv("hce-train"), "distill-query", "--model", str(base), *DISTILL,
                    "--data", str(data_dir), "--out", str(model), "--overwrite", "--no-progress"], check=True)
    subprocess.run([*cli.tool_argv("hce-export"), "onnx", "--model", str(model), "--out", str(export),
                    "--quantize", "--overwrite"], check=True)
    stamp.write_text(recipe + "\n")
    return export


def previous_tree(commit: str) -> Path:
    """``hce_serve`` as it was at ``commit`` (git archive), for the previous serving path's server."""
    out = work_dir() / f"previous-{commit}"
    if not (out / "hce_serve" / "__init__.py").is_file():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(paths.ROOT), "archive", commit, "hce_serve"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


BUILD_INDEX = """
import sys, numpy as np
from hce_serve.folder.store import IndexStore
from hce_serve.formats.beir import iter_corpus
from hce_serve.index.index import Index
from hce_serve.options import IndexParams
npz, corpus, export, folder = sys.argv[1:5]
z = np.load(npz, allow_pickle=False)
ids, d = [str(i) for i in z["ids"]], z["d"]
keep = set(ids)
docs = {x.id: x for x in iter_corpus(corpus) if x.id in keep}
index = Index(d.shape[1], IndexParams(ef_search=100, exact_threshold=0), capacity=len(ids))
index.add(ids, d)
IndexStore.create(folder, index, export, overwrite=True, documents=[docs[i] for i in ids])
"""


def build_index(previous: Path | None, npz: Path, corpus: Path, export: Path, folder: Path) -> None:
    """The index folder, written by the previous commit's code: both servers read it (the new code reads
    older folders; the old code need not read newer ones); by this checkout's without one. Dense only, ef 100."""
    code = previous or paths.ROOT
    subprocess.run([sys.executable, "-c", BUILD_INDEX, str(npz), str(corpus), str(export), str(folder)],
                   cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, check=True)


# ---- servers ----------------------------------------------------------------------------------------------
def spawn(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, port: int | None = None,
          timeout: float = 300.0) -> Server:
    """A server process on 127.0.0.1:``port``; returns once ``/healthz`` answers 200."""
    import http.client

    port = port or free_port()
    logf = tempfile.TemporaryFile()  # noqa: SIM115 - the Server closes it
    proc = subprocess.Popen([a.replace("{port}", str(port)) for a in argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=logf)
    server = Server(proc, port, logf)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[:4]} exited with {proc.returncode}: {server.stderr_tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()
    server.__exit__()
    raise RuntimeError(f"{argv[:4]} did not answer /healthz within {timeout:.0f} s")


@dataclass
class Setup:
    index: Path
    previous: Path
    peer_model: Path
    peer_file: str
    npz: Path
    corpus: Path
    graphs: list[str]
    servers: dict[str, Server] = field(default_factory=dict)


def start(system: str, graph: str, s: Setup) -> Server:
    common = ["-q", "http", "--index", str(s.index), "--port", "{port}", "--read-only", "--query-cache", "0",
              "--query-encoder", graph]
    if system == "previous":
        return spawn([sys.executable, "-m", "hce_serve.cli.serve", *common], cwd=s.previous,
                     env={**os.environ, "PYTHONPATH": str(s.previous)})
    if system == "peer":
        return spawn([sys.executable, "-m", "benchmarks.http_peer", "--model", str(s.peer_model), "--file",
                      s.peer_file, "--vectors", str(s.npz), "--corpus", str(s.corpus), "--port", "{port}"],
                     cwd=paths.ROOT)
    return spawn([*cli.tool_argv(), *common, *HCE_FLAGS[system]], cwd=paths.ROOT)


# ---- measurements -----------------------------------------------------------------------------------------
def ceiling(export: Path, graph: str, queries: list[str], seconds: float) -> dict[str, Any]:
    """The encoder alone, batched, on both cores: queries per second for each arrangement; ``best`` is the
    ceiling."""
    from hce_serve.encoder import Encoder

    def rate(encoders: list[Any], batch: int) -> float:
        n = max(len(queries), batch)  # the queries in turn (again from the start when there are fewer than a batch)
        batches = [[queries[(i + j) % len(queries)] for j in range(batch)] for i in range(0, n - batch + 1, batch)]
        for e in encoders:
            e.encode_queries(batches[0])  # warm-up
        done = [0] * len(encoders)
        stop = time.perf_counter() + seconds

        def loop(j: int) -> None:
            i = j
            while time.perf_counter() < stop:
                encoders[j].encode_queries(batches[i % len(batches)])
                done[j] += batch
                i += len(encoders)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(j,)) for j in range(len(encoders))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(done) / (time.perf_counter() - t0)

    one = [Encoder(export, variant="int8", threads=1, query_encoder=graph) for _ in range(2)]
    two = [Encoder(export, variant="int8", threads=2, query_encoder=graph)]
    out = {}
    for batch in (8, 32):
        out[f"2x1thread_b{batch}"] = round(rate(one, batch), 1)
        out[f"1x2threads_b{batch}"] = round(rate(two, batch), 1)
        log.info("ceiling %s b%d: %s", graph, batch, out)
    return {"qps": out, "best": max(out.values()), "best_at_b8": max(v for k, v in out.items() if k.endswith("b8")),
            "seconds_each": seconds, "query_graph": one[0].query_graph}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its descendants (a --workers server's processes), from /proc."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # gone, or no /proc (not Linux): the column is left out
            continue
    return total


def batch_stats(server: Server) -> dict[str, Any] | None:
    """The batcher's counters from ``/stats`` (hce's servers; None for the others)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/stats")
        r = conn.getresponse()
        return json.loads(r.read()).get("batching") if r.status == 200 else None
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def load(server: Server, bodies: list[dict], level: int, n: int, batches: bool = False) -> dict[str, Any]:
    """One round: QPS, latency percentiles, errors, the CPU per request of the server and of this client, and
    with ``batches`` (a one-process hce server) the requests per encoder batch."""
    before = batch_stats(server) if batches else None
    cpu0, me0 = cpu_seconds(server.proc.pid), time.process_time()
    if level == 1:
        lat = asyncio.run(sequential(server.port, bodies, n))
        qps, errors = n / sum(lat), 0
    else:
        r = asyncio.run(run_load(server.port, bodies, level, n))
        lat, qps = r["latencies"], r["qps"]
        errors = sum(v for code, v in r["status"].items() if code != 200) + r["bad_bodies"]
    cpu = {"server_cpu_ms_per_request": round((cpu_seconds(server.proc.pid) - cpu0) / n * 1e3, 3),
           "client_cpu_ms_per_request": round((time.process_time() - me0) / n * 1e3, 3)}
    after = batch_stats(server) if batches else None
    if before and after and after["batches"] > before["batches"]:
        batches = after["batches"] - before["batches"]
        cpu["requests_per_batch"] = round((after["requests"] - before["requests"]) / batches, 2)
    return {"qps": round(qps, 1), "errors": errors, **timing.percentiles(lat), **cpu}


def run_level(graph: str, level: int, systems: list[str], s: Setup, bodies: list[dict], n: int,
              rounds: int) -> dict[str, Any]:
    """Every system at one level, in ``rounds`` rounds (order rotated); per system its rounds and the median."""
    per: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    for r in range(rounds):
        order = systems[r % len(systems):] + systems[: r % len(systems)]
        for name in order:
            server = s.servers[name]
            time.sleep(COOL_DOWN)  # the previous system's threads settle (the peer's onnxruntime threads spin)
            asyncio.run(sequential(server.port, bodies, 30))  # warm-up: this system's caches and threads
            # the peer answers 10-50x slower under load: a quarter of the requests still gives hundreds of samples
            per[name].append(load(server, bodies, level, n if name != "peer" or level == 1 else n // 4,
                                  batches=name in HCE_FLAGS and name != "hce_workers2"))
            log.info("%s c=%d %s round %d: %s", graph, level, name, r, per[name][-1])
    out = {}
    for name, runs in per.items():
        mid = sorted(runs, key=lambda x: x["qps"])[len(runs) // 2]
        out[name] = {**mid, "rounds": runs, "errors_total": sum(x["errors"] for x in runs)}
    return out


def fidelity(index: Path, graph: str, data: Any, qids: list[str], seeds: int) -> dict[str, Any]:
    """nDCG@10 and top-10 overlap of the queries encoded alone and in random batches of 8 (int8)."""
    from hce_serve.engine import Engine
    from hce_serve.metrics import evaluate

    qrels = {q: data.qrels[q] for q in qids if q in data.qrels}
    with Engine.open(index, query_cache=0, threads=1, query_encoder=graph) as eng:
        reqs = [eng.prepare_search([data.queries[q]], k=K, fields=()) for q in qids]
        alone = [[d for d, *_ in eng.run_searches([r])[0][0]] for r in reqs]
        runs = {"alone": alone}
        for seed in range(seeds):
            order = np.random.default_rng(seed).permutation(len(reqs))
            got: list[list[str]] = [[] for _ in reqs]
            for i in range(0, len(order), 8):
                part = [int(j) for j in order[i : i + 8]]
                for j, rows in zip(part, eng.run_searches([reqs[j] for j in part]), strict=True):
                    got[j] = [d for d, *_ in rows[0]]
            runs[f"batched_seed{seed}"] = got
    out = {}
    for name, lists in runs.items():
        run = {q: {d: float(K - r) for r, d in enumerate(ids)} for q, ids in zip(qids, lists, strict=True)}
        m = evaluate(qrels, run)
        out[name] = {"ndcg@10": round(m["ndcg@10"], 5)}
        if name != "alone":
            overlap = [len(set(a) & set(b)) / K for a, b in zip(alone, lists, strict=True)]
            out[name].update({"top10_overlap": round(float(np.mean(overlap)), 4),
                              "identical_top10": int(sum(a == b for a, b in zip(alone, lists, strict=True)))})
    out["queries"] = len(qids)
    return out


def profile(server: Server, bodies: list[dict], seconds: float, raw: Path) -> dict[str, Any]:
    """py-spy on the server process while 8 requests are in flight: the share of samples in each stage."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).is_file():
        return {"skipped": "py-spy is not installed (pip install py-spy; it is in the bench extra)"}
    spy = subprocess.Popen([exe, "record", "-p", str(server.proc.pid), "-d", f"{seconds:g}", "-r", "100", "-f", "raw",
                            "-o", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches
    while spy.poll() is None:
        asyncio.run(run_load(server.port, bodies, 8, 400))
    err = spy.stderr.read().decode(errors="replace") if spy.stderr else ""
    if spy.returncode != 0 or not raw.is_file():
        return {"skipped": f"py-spy failed ({spy.returncode}): {' '.join(err.split())[-300:]}"}
    samples = sum(int(n) for line in raw.read_text().splitlines() if (n := line.rpartition(" ")[2]).isdigit())
    return {"samples": samples, "rate_hz": 100, "seconds": seconds, "load": "8 in flight",
            "shares": summarize_profile(raw),
            "note": "py-spy's default view: samples of threads not idle in Python's view; uvloop's native run "
                    "(epoll waits included) shows as the event loop's own frame"}


def summarize_profile(raw: Path) -> dict[str, float]:
    """py-spy's raw (collapsed) stacks -> the share of samples in each of ``STAGES`` (and ``other``)."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = stack.split(";")[::-1]  # innermost first
        stage = next((name for f in frames for name, pats in STAGES if any(p in f for p in pats)), "other")
        counts[stage] = counts.get(stage, 0) + int(n)
    return {name: round(counts.get(name, 0) / max(total, 1), 4) for name, _ in (*STAGES, ("other", ()))}


def ratios(levels: dict[str, Any], ceil: dict[str, Any] | None) -> dict[str, Any]:
    """The targets, read at 8 in flight (and at 1 for latency), for each hce configuration measured."""
    out: dict[str, Any] = {}
    at8, at1 = levels.get("8"), levels.get("1")
    for name in HCE_FLAGS:
        if not any(name in lv for lv in (at8 or {}, at1 or {})):
            continue
        r: dict[str, Any] = {}
        if at8 and name in at8:
            me = at8[name]
            r["qps_at_8"], r["p99_ms_at_8"] = me["qps"], me["p99_ms"]
            if "previous" in at8:
                r["qps_over_previous"] = round(me["qps"] / at8["previous"]["qps"], 3)
            if "peer" in at8:
                r["qps_over_peer"] = round(me["qps"] / at8["peer"]["qps"], 3)
            if ceil:
                r["qps_over_ceiling"] = round(me["qps"] / ceil["best"], 3)
                r["qps_over_ceiling_b8"] = round(me["qps"] / ceil["best_at_b8"], 3)
        if at1 and name in at1 and "previous" in at1:
            r["p50_over_previous_at_1"] = round(at1[name]["p50_ms"] / at1["previous"]["p50_ms"], 3)
            r["mean_over_previous_at_1"] = round(at1[name]["mean_ms"] / at1["previous"]["mean_ms"], 3)
        met = {}
        for key, bound in TARGETS.items():
            value = r.get("p99_ms_at_8" if key == "p99_ms" else key)
            if value is not None:
                met[key] = value <= bound if key in ("p99_ms", "p50_over_previous_at_1") else value >= bound
        r["targets_met"] = met
        out[name] = r
    return out


# ---- the run ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "http")
    ap.add_argument("--data", type=Path, default=paths.SHARED_DATA / "scifact", help="BEIR folder [SciFact]")
    ap.add_argument("--docs", type=int, default=None, help="documents indexed [all; 1,000 with --quick]")
    ap.add_argument("--graphs", default="full,shallow", help="query graphs, comma list [full,shallow]")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list [{','.join(SYSTEMS)}]")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="requests in flight [1,8,32]")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per level [3; 1 with --quick]")
    ap.add_argument("--requests", default=None,
                    help="requests per round at each level [600,3000,4000; quick 60,400,600]")
    ap.add_argument("--ceiling-seconds", type=float, default=None, help="per arrangement [8; 2 with --quick]")
    ap.add_argument("--previous", default=PREVIOUS, help=f"commit of the previous serving path [{PREVIOUS}]")
    ap.add_argument("--no-distill", action="store_true", help="never distil a shallow graph (full only if absent)")
    ap.add_argument("--export", type=Path, default=None,
                    help="EXPORT_DIR to serve, as it is: both graphs if it has a shallow one [the base model with "
                         "a distilled L=2 query graph]")
    ap.add_argument("--base-model", type=Path, default=None,
                    help="the model the peer serves and the distillation starts from [all-MiniLM-L6-v2]")
    ap.add_argument("--profile-seconds", type=float, default=None, help="py-spy on the hce server [20; 5 quick; 0 off]")
    ap.add_argument("--resume", action="store_true", help="keep the levels the results file holds")
    args = cli.parse(ap, argv)
    q = args.quick
    args.docs = args.docs or (1000 if q else None)
    args.rounds = args.rounds or (1 if q else 3)
    counts = [int(x) for x in (args.requests or ("60,400,600" if q else "600,3000,4000")).split(",")]
    levels = [int(x) for x in args.levels.split(",")]
    count = dict(zip(LEVELS, counts, strict=True))
    systems = [x for x in args.systems.split(",") if x]
    if unknown := set(systems) - set(SYSTEMS):
        ap.error(f"unknown systems: {', '.join(sorted(unknown))}")
    t0 = time.perf_counter()

    from hce_serve.encoder import Encoder
    from hce_serve.formats.beir import load_beir

    data = load_beir(args.data, "test")
    corpus = data.corpus[: args.docs] if args.docs else data.corpus
    qids = sorted(data.queries)
    queries = [data.queries[i] for i in qids]
    bodies = [{"query": t, "k": K} for t in queries]

    base = args.base_model or base_model_path()
    try:
        name = "minilm-q2" if args.base_model is None else f"{base.name}-q2"
        shallow = None if args.export else shallow_export(args.data, base, name, build=not (q or args.no_distill))
    except subprocess.CalledProcessError as e:  # the full graph is still worth measuring; the file says why
        log.error("the shallow query graph could not be made (%s): measuring the full graph only", e)
        shallow = None
    export = args.export or shallow or ensure_export("minilm", base)
    wanted = [g for g in args.graphs.split(",") if g]
    graphs = [g for g in wanted if g == "full"
              or Encoder(export, variant="int8", query_encoder="auto").query_encoder == g]
    if skipped := set(wanted) - set(graphs):
        log.warning("no %s query graph in %s: measuring %s only", ", ".join(skipped), export, ", ".join(graphs))
    settings = {"mode": "quick" if q else "full", "docs": len(corpus), "rounds": args.rounds, "k": K,
                "requests_per_round": {str(lv): count[lv] for lv in levels}, "previous_commit": args.previous,
                "export": export.name}
    out = paths.result_path(args.out)
    result: dict[str, Any] = {}
    if args.resume and out.is_file():
        result = json.loads(out.read_text())
        if result.get("settings") != settings:
            raise SystemExit(f"{out}: written with other settings ({result.get('settings')}); run without --resume")
    result.update({"benchmark": "http", "settings": settings, "systems": systems,
                   "client": "benchmarks/loopback.py: asyncio keep-alive connections in one process, same 2 cores",
                   "isa_note": _isa_note()})
    result.setdefault("graphs", {})

    work_dir().mkdir(parents=True, exist_ok=True)
    enc = Encoder(export, variant="int8", threads=2, query_encoder="full")
    _, dvec, _ = encode(enc, queries, [d.full_text for d in corpus], cache_key=f"{args.data.name}-http-{len(corpus)}")
    del enc
    with tempfile.TemporaryDirectory(prefix="hce-http-", dir=work_dir()) as tmp:
        work = Path(tmp)
        npz = work / "docs.npz"
        np.savez(npz, ids=np.array([d.id for d in corpus]), d=dvec)
        previous = None
        if "previous" in systems:
            try:
                previous = previous_tree(args.previous)
            except subprocess.CalledProcessError as e:  # a clone without that commit: the others still run
                log.warning("previous left out: git cannot archive %s (%s)", args.previous,
                            " ".join((e.stderr or b"").decode(errors="replace").split())[:200])
                systems = [x for x in systems if x != "previous"]
        build_index(previous, npz, args.data / "corpus.jsonl", export, work / "index")
        peer_model, peer_file = _peer(systems, base)
        s = Setup(work / "index", previous, peer_model, peer_file, npz, args.data / "corpus.jsonl", graphs)
        if peer_model is None:
            systems = [x for x in systems if x != "peer"]
        result["systems"] = systems  # those that run here (a peer or a previous commit that is not there is left out)
        for graph in graphs:
            g = result["graphs"].setdefault(graph, {"levels": {}})
            todo = [lv for lv in levels if str(lv) not in g["levels"]]
            if not todo and "fidelity" in g and "profile" in g:
                continue
            if "ceiling" not in g:
                secs = args.ceiling_seconds if args.ceiling_seconds is not None else (2.0 if q else 8.0)
                g["ceiling"] = ceiling(export, graph, queries, secs)
                _write(out, result)
            if "fidelity" not in g:
                g["fidelity"] = fidelity(s.index, graph, data, qids if not q else qids[:80], 1 if q else 3)
                log.info("fidelity %s: %s", graph, g["fidelity"])
                _write(out, result)
            try:
                for name in systems:
                    s.servers[name] = start(name, graph, s)
                for lv in todo:
                    g["levels"][str(lv)] = run_level(graph, lv, systems, s, bodies, count[lv], args.rounds)
                    g["ratios"] = ratios(g["levels"], g["ceiling"])
                    _write(out, result)
                secs = args.profile_seconds if args.profile_seconds is not None else (5.0 if q else 20.0)
                if "hce" in s.servers and secs > 0 and "profile" not in g:
                    g["profile"] = profile(s.servers["hce"], bodies, secs, work_dir() / f"profile-{graph}.txt")
                    log.info("profile %s: %s", graph, g["profile"])
                    _write(out, result)
            finally:
                for server in s.servers.values():
                    server.__exit__()
                s.servers.clear()
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(_write(out, result))
    return 0


def _peer(systems: list[str], base: Path) -> tuple[Path | None, str]:
    if "peer" not in systems:
        return None, ""
    if peers.versions()["sentence-transformers"] is None:
        log.warning("peer left out: sentence-transformers is not installed")
        return None, ""
    config = peers.int8_config()
    return peers.prepare(base, config), peers.int8_file(config)


def _isa_note() -> str:
    f = cpu.flags()
    if {"amx_int8", "amx_tile"} & f:
        return "AMX-INT8 and AVX-512 (VNNI)" if "avx512_vnni" in f else "AMX-INT8"
    if "avx512_vnni" in f:
        return "AVX-512 with VNNI, no AMX"
    if "avx512f" in f:
        return "AVX-512 without VNNI, no AMX"
    return "AVX2 only" if "avx2" in f else "no AVX2"


def _write(out: Path, result: dict[str, Any]) -> Path:
    return provenance.write_result(out, result, __file__)


if __name__ == "__main__":
    sys.exit(main())
