"""The role extras resolve to what each role needs: serving never pulls torch, training never hnswlib/optimum."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def resolve(extra: str, tmp_path: Path) -> set[str]:
    report = tmp_path / f"{extra}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
         f"{ROOT}[{extra}]"],
        capture_output=True, text=True, timeout=240,
    )
    if proc.returncode != 0:
        if "Could not find" in proc.stderr or "connection" in proc.stderr.lower() or "resolve" in proc.stderr.lower():
            pytest.skip(f"package index unreachable: {proc.stderr.strip().splitlines()[-1]}")
        raise AssertionError(proc.stderr)
    return {i["metadata"]["name"].lower().replace("_", "-") for i in json.loads(report.read_text())["install"]}


def test_serve_extra_has_no_torch(tmp_path):
    names = resolve("serve", tmp_path)
    assert {"onnxruntime", "tokenizers", "hnswlib", "fastapi", "uvicorn"} <= names
    assert not names & {"torch", "transformers", "optimum", "optimum-onnx", "sentence-transformers"}


def test_train_extra_has_no_hnswlib_or_optimum(tmp_path):
    # torch itself is satisfied by the installed CPU build; --ignore-installed would fetch a CUDA one,
    # so only check the declared requirements here.
    from importlib.metadata import requires

    reqs = [r for r in (requires("hce") or []) if 'extra == "train"' in r]
    names = {r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in reqs}
    assert {"torch", "transformers", "faiss-cpu"} <= names
    assert not names & {"hnswlib", "optimum", "optimum-onnx", "onnxruntime"}
