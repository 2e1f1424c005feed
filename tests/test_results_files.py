"""Every number in benchmarks/results/ was written by code that can reproduce it: each results file (or
each section of a file several harnesses share) names the script that wrote it, that script exists, and
the record carries the provenance stamp. A number no script wrote can't be reproduced.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import paths, provenance

WRITERS = re.compile(r"(benchmarks/\w+\.py|tests/reliability/\w+\.py|scripts/demo\.sh)")


def records(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{where: record}: the file itself, or each section of a file that holds one record per harness."""
    if "script" in doc or not all(isinstance(v, dict) for v in doc.values()):
        return {"": doc}
    return {f"[{k}]": v for k, v in doc.items()}


def problems(name: str, doc: dict[str, Any]) -> list[str]:
    out = []
    for where, rec in records(doc).items():
        script = rec.get("script")
        if script is None:
            out.append(f"{name}{where}: names no script that wrote it")
            continue
        if not (isinstance(script, str) and WRITERS.fullmatch(script) and (paths.ROOT / script).is_file()):
            out.append(f"{name}{where}: script {script!r} is not a writer in this repository")
        missing = [k for k in provenance.STAMP_KEYS if k not in rec]
        if missing:
            out.append(f"{name}{where}: stamp incomplete, no {missing}")
        elif not (rec["machine"].get("cpu") and rec["commit"] and re.match(r"\d{4}-\d\d-\d\dT", rec["date"])):
            out.append(f"{name}{where}: stamp without cpu, commit or date")
    return out


FILES = sorted(paths.RESULTS.glob("*.json"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_results_file_names_its_writer_and_carries_the_stamp(path: Path):
    assert problems(path.name, json.loads(path.read_text())) == []


def test_results_folder_holds_only_json():
    assert FILES and {p.suffix for p in paths.RESULTS.iterdir()} == {".json"}


def test_the_check_catches_what_it_must(tmp_path):
    ok = provenance.write_result(tmp_path / "ok.json", {"n": 1}, paths.ROOT / "benchmarks" / "recall.py")
    assert problems("ok.json", json.loads(ok.read_text())) == []
    assert problems("hand.json", {"note": "typed in", "n": 1}) == ["hand.json: names no script that wrote it"]
    rec = json.loads(ok.read_text())
    assert problems("x.json", {**rec, "script": "benchmarks/gone.py"})
    assert problems("x.json", {**rec, "script": "README.md"})
    assert problems("x.json", {k: v for k, v in rec.items() if k != "commit"})
    sectioned = {"crash": rec, "load": {"stamp": {}, "qps": 3}}
    assert problems("r.json", sectioned) == ["r.json[load]: names no script that wrote it"]


def test_writer_refuses_a_script_it_cannot_name(tmp_path):
    with pytest.raises(ValueError, match="name the script"):
        provenance.write_result(tmp_path / "x.json", {}, tmp_path / "elsewhere.py")
    with pytest.raises(ValueError, match="name the script"):
        provenance.write_result(tmp_path / "x.json", {}, "benchmarks/no_such_study.py")
    assert not (tmp_path / "x.json").exists()


def test_a_rewritten_file_gets_a_fresh_stamp(tmp_path):
    out = provenance.write_result(tmp_path / "study.json", {"runs": [1]}, "benchmarks/quality.py")
    old = {**json.loads(out.read_text()), "commit": "0000000", "script": "benchmarks/recall.py"}
    rec = json.loads(provenance.write_result(out, {**old, "runs": [1, 2]}, "benchmarks/quality.py").read_text())
    assert rec["runs"] == [1, 2] and rec["commit"] == provenance.git_commit()
    assert rec["script"] == "benchmarks/quality.py"


def test_sections_are_replaced_one_at_a_time(tmp_path):
    out = tmp_path / "rel.json"
    provenance.write_result(out, {"n": 1}, "tests/reliability/crash.py", section="crash")
    provenance.write_result(out, {"n": 2}, "tests/reliability/fuzz.py", section="fuzz_files")
    provenance.write_result(out, {"n": 3}, "tests/reliability/crash.py", section="crash")
    doc = json.loads(out.read_text())
    assert {k: (v["script"], v["n"]) for k, v in doc.items()} == {
        "crash": ("tests/reliability/crash.py", 3), "fuzz_files": ("tests/reliability/fuzz.py", 2)}
    single = provenance.write_result(tmp_path / "one.json", {"n": 1}, "benchmarks/recall.py")
    with pytest.raises(ValueError, match="not sections"):
        provenance.write_result(single, {"n": 2}, "tests/reliability/crash.py", section="crash")
