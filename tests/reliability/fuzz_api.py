"""Malformed-input fuzzing of the two front doors: the HTTP API (schemathesis) and the command line.

HTTP: schemathesis generates valid and invalid requests for every operation of the app's own OpenAPI
document and calls the FastAPI app in-process (ASGI); every answer must be < 500, and every 4xx must carry
``{"detail": "<one line>"}``. CLI: hypothesis builds random ``hce-serve`` command lines from real
subcommands and options, valid/missing/garbage files and bad numbers; every run must exit 0, 1 or 2
without a traceback, and exit 1 must print one ``Error:`` line.

Queries: the search texts of ``fuzz_inputs.search_query`` (arbitrary unicode and lone surrogates, FTS-like
syntax, stop words only, very long) in every mode, by POST and GET: 200 with well-formed hits of live
documents, or a one-line 4xx, never a 5xx. User text must never reach a query language as syntax: a lexical
search answers exactly as for the same text with every non-word character turned into a space.

``python -m tests.reliability.fuzz_api --export EXPORT_DIR [--http-cases 300 --cli-cases 600 --query-cases 2000]``
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from benchmarks.harness import cli, provenance

from .fuzz_inputs import search_query

# The sample index's vocabulary (besides "document", "about", "topic" and the numbers): queries built from it
# find documents, so the fuzzer checks hits, not only empty answers.
TOPIC_WORDS = ("protein", "enzyme", "climate", "carbon", "vaccine", "immune", "neuron", "tumor", "insulin", "glacier")
MODES = ("dense", "lexical", "hybrid")


# ---- HTTP (schemathesis over the OpenAPI document, in-process ASGI) and CLI argv --------------------------
def _one_line_4xx(status: int, body: bytes) -> str | None:
    """None if the answer is acceptable: < 500, and a 4xx carries {"detail": "<one line>"}."""
    if status >= 500:
        return f"server error {status}: {body[:200]!r}"
    if status >= 400:
        try:
            detail = json.loads(body)["detail"]
        except (ValueError, KeyError, TypeError):
            return f"{status} without a JSON detail: {body[:200]!r}"
        if not isinstance(detail, str) or "\n" in detail:
            return f"{status} detail is not one line: {detail!r:.200}"
    return None


def http_fuzz(app: Any, n: int, strict: bool, tally: Counter, problems: list[str]) -> Counter:
    """``n`` schemathesis cases per operation and generation mode (valid and invalid requests)."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _http_prop(op, mode, n, strict, tally, problems)()
            except Unsatisfiable:  # no invalid request exists for an operation without inputs (GET /healthz)
                tally["operations_without_invalid_inputs"] += 1
    return tally


def _http_prop(op: Any, mode: Any, n: int, strict: bool, tally: Counter, problems: list[str]) -> Any:
    where = f"{op.label} {mode.value}"

    @settings(max_examples=n, deadline=None, database=None, derandomize=strict,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate] if not strict else list(Phase))
    @given(case=op.as_strategy(generation_mode=mode))
    def prop(case: Any) -> None:
        tally["cases"] += 1
        try:
            resp = case.call()
            status, bad = resp.status_code, _one_line_4xx(resp.status_code, resp.content)
        except Exception as e:  # the in-process client re-raises what the app did not handle
            status, bad = 500, f"unhandled {type(e).__name__}: {str(e)[:200]}"
        tally[f"status_{status // 100}xx"] += 1
        if bad:
            tally["traceback" if status >= 500 else "bad_error_body"] += 1
            problems.append(f"{where}: {bad}")
            assert not strict, problems[-1]

    return prop


def cli_argv(paths: dict[str, str]) -> st.SearchStrategy[list[str]]:
    """Random command lines: each subcommand with its own options, given valid, missing or garbage files and
    bad numbers, plus now and then a junk token. ``http`` is left out (it would serve forever); its refusal
    paths are tested in tests/test_security.py.
    """
    files = st.sampled_from(sorted(paths.values()))
    idx = st.sampled_from([paths["idx-cli"], paths["idx-cli"], paths["garbage.bin"], paths["missing"], paths["export"]])
    num = st.sampled_from(["1", "3", "8", "100", "0", "-1", "10001", "99999999999999999999", "1e3", "x"])
    text = st.text(max_size=12)
    query = search_query(TOPIC_WORDS)
    mode = st.sampled_from([*MODES, *MODES, "fuzzy", "", "HYBRID"])
    cmds = {
        ("index", "build"): [("--model", files), ("--corpus", files), ("--index", st.just(paths["out"] + ".idx")),
                             ("--M", num), ("--ef", num), ("--batch-size", num), ("--overwrite",)],
        ("index", "add"): [("--index", idx), ("--corpus", files), ("--batch-size", num)],
        ("index", "delete"): [("--index", idx), ("--id", text)],
        ("index", "delete", ""): [("--index", idx), ("--ids-file", files)],
        ("index", "compact"): [("--index", idx)],
        ("index", "stats"): [("--index", idx)],
        ("search",): [("--index", idx), (text,), ("--k", num), ("--json",)],
        ("search", "", ""): [("--index", idx), (query,), ("--mode", mode), ("--k", num), ("--json",), ("--explain",)],
        ("search", ""): [("--index", idx), ("--queries", files), ("--k", num), ("--run", files)],
        ("eval",): [("--index", idx), ("--queries", files), ("--qrels", files), ("--k", num)],
    }
    junk = st.sampled_from([["--bogus"], ["-v"], ["-q"], ["--help"], ["--variant", "fp16"], ["--threads", "0"]])

    def one(cmd: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
        opts = [st.tuples(*(st.just(o) if isinstance(o, str) else o for o in spec)) for spec in cmds[cmd]]
        # Usually every option the command knows (in random order), so most runs get past click's usage checks.
        full = st.permutations(range(len(opts)))
        picked = st.one_of(full, full, st.lists(st.sampled_from(range(len(opts))), max_size=len(opts) + 1))

        def build(choice: list[int]) -> st.SearchStrategy[list[str]]:
            parts = [opts[i] for i in choice] + [st.lists(junk, max_size=1).map(lambda j: j[0] if j else [])]
            return st.tuples(*parts).map(lambda t: [x for part in t for x in part])
        return picked.flatmap(build).map(lambda rest: [*(c for c in cmd if c), *rest])  # "" keys a variant
    return st.sampled_from(list(cmds)).flatmap(one)


def cli_fuzz(paths: dict[str, str], n: int, strict: bool, tally: Counter, problems: list[str]) -> Counter:
    """Every command line must end with exit 0, 1 or 2 and print no traceback; exit 1 is one ``Error:`` line."""
    from click.testing import CliRunner

    from hce_serve.cli import main as cli_main

    @settings(max_examples=n, deadline=None, database=None, derandomize=strict,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate] if not strict else list(Phase))
    @given(cli_argv(paths))
    def prop(argv: list[str]) -> None:
        tally["cases"] += 1
        res = CliRunner().invoke(cli_main, argv)
        tally[f"exit_{res.exit_code}"] += 1
        out = res.output
        bad = None
        if res.exit_code not in (0, 1, 2) or (res.exception is not None and not isinstance(res.exception, SystemExit)):
            bad = f"exit {res.exit_code}, {type(res.exception).__name__}: {res.exception}"
        elif "Traceback" in out:
            bad = "traceback in output"
        elif res.exit_code == 1 and not any(line.startswith("Error: ") for line in out.splitlines()):
            bad = f"exit 1 without an 'Error:' line: {out[-200:]!r}"
        if bad:
            tally["traceback"] += 1
            problems.append(f"{argv!r}: {bad}")
            assert not strict, problems[-1]

    prop()
    return tally


def query_requests() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """(method, the request: a JSON body for POST, the query parameters for GET) for ``/search``."""
    text = search_query(TOPIC_WORDS)
    # A lone surrogate cannot travel as UTF-8 but can as a JSON escape (\ud800): the server must take it too.
    surrogate = st.tuples(text, st.sampled_from(["\ud800", "\udfff", "\ud83d"])).map(lambda t: t[0] + t[1])
    body = st.fixed_dictionaries(
        {"query": st.one_of(text, text, text, surrogate), "mode": st.sampled_from(MODES)},
        optional={"k": st.sampled_from([1, 5, 20, 100, 0, -1, 1001]),
                  "fusion": st.sampled_from(["rrf", "minmax", "dbsf", "sum"]),
                  "alpha": st.sampled_from([0.0, 0.3, 1.0, 1.5, -0.1]), "depth": st.sampled_from([1, 100, 0, 10_001]),
                  "explain": st.booleans(), "fields": st.sampled_from([["title"], ["text"], []]),
                  "filter": st.sampled_from([{"topic": "1"}, {"topic": ["0", "2"]}, {"missing": 1}])})
    # GET: as long as an HTTP client puts in a URL (httpx refuses a query string over 64 kB once escaped)
    get = st.fixed_dictionaries({"q": text.map(lambda q: q[:1500]), "mode": st.sampled_from(MODES)},
                                optional={"k": st.sampled_from([1, 20]), "explain": st.booleans()})
    return st.one_of(body.map(lambda b: ("POST", b)), get.map(lambda g: ("GET", g)))


def _check_hits(answer: Any, k: int, live: set[str]) -> str | None:
    """None if a 200 answer is well formed: at most k hits of live ids, each once, with finite scores."""
    hits = answer.get("hits") if isinstance(answer, dict) else None
    if not isinstance(hits, list) or len(hits) > k:
        return f"malformed answer: {str(answer)[:200]}"
    ids = [h.get("id") for h in hits]
    if len(set(ids)) != len(ids) or not set(ids) <= live:
        return f"hits {ids[:10]} repeat an id or name one that is not live"
    if not all(isinstance(h.get("score"), (int, float)) and math.isfinite(h["score"]) for h in hits):
        return f"a score is not a finite number: {hits[:3]}"
    return None


def query_fuzz(app: Any, live: set[str], n: int, strict: bool, tally: Counter, problems: list[str]) -> Counter:
    """Search texts of every kind in every mode: 200 with well-formed hits or a one-line 4xx, never a 5xx; and
    a lexical search is blind to syntax (the same answer once every non-word character is a space)."""
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as client:
        def post(body: dict[str, Any]) -> Any:  # ASCII JSON: lone surrogates travel as escapes
            return client.post("/search", content=json.dumps(body).encode(),
                               headers={"content-type": "application/json"})

        @settings(max_examples=n, deadline=None, database=None, derandomize=strict,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate] if not strict else list(Phase))
        @given(query_requests())
        def prop(req: tuple[str, dict[str, Any]]) -> None:
            method, spec = req
            tally["cases"] += 1
            resp = post(spec) if method == "POST" else client.get("/search", params=spec)
            tally[f"status_{resp.status_code // 100}xx"] += 1
            bad = _one_line_4xx(resp.status_code, resp.content)
            if bad is None and resp.status_code == 200:
                bad = _check_hits(resp.json(), spec.get("k", 10), live)
                tally["hits"] += len(resp.json().get("hits") or [])
                if method == "POST" and spec["mode"] == "lexical" and not bad:
                    bad = _syntax_blind(post, spec, resp.json())
                    tally["syntax_checks"] += 1
            if bad:
                tally["traceback" if resp.status_code >= 500 else "bad_answer"] += 1
                problems.append(f"{method} /search {str(spec)[:160]!r}: {bad}")
                assert not strict, problems[-1]

        prop()
    return tally


def _syntax_blind(post: Any, body: dict[str, Any], answer: dict[str, Any]) -> str | None:
    """The same lexical search with every non-word character a space must give the same hits and scores."""
    plain = re.sub(r"\W+", " ", body["query"])
    if plain == body["query"]:
        return None
    if not plain.strip():  # no words at all: the lexical side must find nothing (a blank query is a 400)
        return f"hits for a query without words: {answer['hits'][:3]}" if answer["hits"] else None
    again = post({**body, "query": plain})
    if again.status_code != 200:
        return f"the query without syntax characters ({plain[:60]!r}) answered {again.status_code}"
    key = [(h["id"], round(h["score"], 5)) for h in answer["hits"]]
    if [(h["id"], round(h["score"], 5)) for h in again.json()["hits"]] != key:
        return f"syntax changed a lexical answer: {body['query'][:60]!r} vs {plain[:60]!r}"
    return None


def api_samples(root: Path, export: Path) -> tuple[Any, dict[str, str]]:
    """A writable engine over a tiny index built with ``export`` (with its lexical part), and the files the CLI
    fuzzer picks from. ``root/idx`` itself is left to ``query_engine``: neither fuzzer changes it."""
    from hce_serve.engine import Engine

    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": TOPIC_WORDS[i % len(TOPIC_WORDS)],
                                          "text": f"document {i} about topic {i % 3} and "
                                                  f"{TOPIC_WORDS[(3 * i + 1) % len(TOPIC_WORDS)]}",
                                          "metadata": {"topic": str(i % 3)}}) + "\n"
                              for i in range(20)))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "topic 1"}) + "\n")
    (root / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (root / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    (root / "bad.jsonl").write_text('{"_id": "a", "text": 5}\nnot json\n')
    (root / "empty.txt").write_text("")
    Engine.build(export, corpus, root / "idx")
    for sub in ("idx-cli", "idx-http"):
        shutil.copytree(root / "idx", root / sub)
    paths = {p.name: str(p) for p in root.iterdir() if p.name not in ("idx", "idx-http")}
    paths.update({"export": str(export), "missing": str(root / "missing.jsonl"), "out": str(root / "out.trec")})
    return Engine.open(root / "idx-http", writable=True), paths


def query_engine(root: Path) -> Any:
    """A read-only engine over ``api_samples``' untouched index: every id it holds stays live."""
    from hce_serve.engine import Engine

    return Engine.open(root / "idx")


def main(argv: Sequence[str] | None = None) -> int:
    from hce_serve.http import create_app

    ap = cli.study_parser(__doc__, "reliability", quick=False)
    ap.add_argument("--export", type=Path, required=True, help="EXPORT_DIR the sample index is built with")
    ap.add_argument("--http-cases", type=int, default=300, help="schemathesis cases per operation and mode")
    ap.add_argument("--cli-cases", type=int, default=600)
    ap.add_argument("--query-cases", type=int, default=2000, help="search texts (every mode)")
    a = cli.parse(ap, argv)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hce-fuzz-api-") as tmp:
        (Path(tmp) / "api").mkdir()
        eng, paths = api_samples(Path(tmp) / "api", a.export)
        reader = query_engine(Path(tmp) / "api")
        runs = (("http", lambda n, *r: http_fuzz(create_app(eng), n, *r), a.http_cases),
                ("cli", lambda n, *r: cli_fuzz(paths, n, *r), a.cli_cases),
                ("queries", lambda n, *r: query_fuzz(create_app(reader), set(reader.ids()), n, *r), a.query_cases))
        for name, fn, n in runs:
            tally: Counter = Counter()
            problems: list[str] = []
            t = time.perf_counter()
            fn(n, False, tally, problems)
            out[name] = {**tally, "problems": problems[:10], "seconds": round(time.perf_counter() - t, 1)}
            print(f"{name}: {dict(tally)}", file=sys.stderr, flush=True)
        eng.close()
        reader.close()
    out["cases"] = sum(v["cases"] for v in out.values())
    out["tracebacks"] = sum(v.get("traceback", 0) for v in out.values() if isinstance(v, dict))
    provenance.write_result(a.out, {**out, "export": str(a.export)}, __file__, section="fuzz_api")
    print(json.dumps({k: out[k] for k in ("cases", "tracebacks")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
