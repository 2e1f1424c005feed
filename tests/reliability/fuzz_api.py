"""Malformed-input fuzzing of the two front doors: the HTTP API (schemathesis) and the command line.

HTTP: schemathesis generates valid and invalid requests for every operation of the app's own OpenAPI
document and calls the FastAPI app in-process (ASGI); every answer must be < 500, and every 4xx must carry
``{"detail": "<one line>"}``. CLI: hypothesis builds random ``hce-serve`` command lines from real
subcommands and options, valid/missing/garbage files and bad numbers; every run must exit 0, 1 or 2
without a traceback, and exit 1 must print one ``Error:`` line.

``python -m tests.reliability.fuzz_api --export EXPORT_DIR [--http-cases 300 --cli-cases 600]``
"""

from __future__ import annotations

import json
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
    cmds = {
        ("index", "build"): [("--model", files), ("--corpus", files), ("--index", st.just(paths["out"] + ".idx")),
                             ("--M", num), ("--ef", num), ("--batch-size", num), ("--overwrite",)],
        ("index", "add"): [("--index", idx), ("--corpus", files), ("--batch-size", num)],
        ("index", "delete"): [("--index", idx), ("--id", text)],
        ("index", "delete", ""): [("--index", idx), ("--ids-file", files)],
        ("index", "compact"): [("--index", idx)],
        ("index", "stats"): [("--index", idx)],
        ("search",): [("--index", idx), (text,), ("--k", num), ("--json",)],
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


def api_samples(root: Path, export: Path) -> tuple[Any, dict[str, str]]:
    """A writable engine over a tiny index built with ``export``, and the files the CLI fuzzer picks from."""
    from hce_serve.engine import Engine

    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"document {i} about topic {i % 3}"}) + "\n"
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


def main(argv: Sequence[str] | None = None) -> int:
    from hce_serve.http import create_app

    ap = cli.study_parser(__doc__, "reliability", quick=False)
    ap.add_argument("--export", type=Path, required=True, help="EXPORT_DIR the sample index is built with")
    ap.add_argument("--http-cases", type=int, default=300, help="schemathesis cases per operation and mode")
    ap.add_argument("--cli-cases", type=int, default=600)
    a = cli.parse(ap, argv)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hce-fuzz-api-") as tmp:
        (Path(tmp) / "api").mkdir()
        eng, paths = api_samples(Path(tmp) / "api", a.export)
        for name, fn, arg, n in (("http", http_fuzz, create_app(eng), a.http_cases), ("cli", cli_fuzz, paths, a.cli_cases)):
            tally: Counter = Counter()
            problems: list[str] = []
            t = time.perf_counter()
            fn(arg, n, False, tally, problems)
            out[name] = {**tally, "problems": problems[:10], "seconds": round(time.perf_counter() - t, 1)}
            print(f"{name}: {dict(tally)}", file=sys.stderr, flush=True)
        eng.close()
    out["cases"] = sum(v["cases"] for v in out.values())
    out["tracebacks"] = sum(v.get("traceback", 0) for v in out.values() if isinstance(v, dict))
    provenance.write_result(a.out, {**out, "export": str(a.export)}, __file__, section="fuzz_api")
    print(json.dumps({k: out[k] for k in ("cases", "tracebacks")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
