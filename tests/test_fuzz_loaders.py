"""Property-based malformed-input tests over every parser and loader (benchmarks/fuzz.py, strict mode).

Each target gets a few dozen hypothesis cases here; ``python benchmarks/fuzz.py --cases 10000`` runs the
same targets at benchmark size. Allowed outcomes: a clean result or an HCEError; anything else fails
the test with the shrunk input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("hnswlib")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz  # noqa: E402

FILE_TARGETS = ["corpus_jsonl", "corpus_gzip", "queries_jsonl", "qrels_tsv", "trec_run", "model_card", "manifest",
                "tree_npz", "tree_ids", "index:hnsw.bin", "index:ids.txt", "index:deleted.npy", "index:leaves.npy",
                "index:manifest.json", "index:wal"]


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> fuzz.Fuzzer:
    return fuzz.Fuzzer(tmp_path_factory.mktemp("fuzz"))


def test_every_loader_has_a_target(fuzzer):
    assert set(FILE_TARGETS) == set(fuzzer.targets())


@pytest.mark.parametrize("name", FILE_TARGETS)
def test_malformed_files_raise_only_project_errors(fuzzer, name):
    tally = fuzzer.run(name, 40, strict=True)
    assert tally["cases"] >= 20 and tally["traceback"] == 0
    assert tally["multiline_message"] == 0  # errors are one line: the CLI prints them as such
    assert tally["hce_error"] > 0  # the mutations really produce broken inputs, not only valid ones


def test_malformed_export_files(tiny_export, tmp_path):
    fz = fuzz.Fuzzer(tmp_path, tiny_export)
    for name in ("export:hce_model.json", "export:tokenizer.json", "export:model_int8.onnx"):
        tally = fz.run(name, 8, strict=True)
        assert tally["traceback"] == 0 and tally["hce_error"] > 0


def test_tokenizer_garbage_is_a_format_error(tiny_export, tmp_path):
    """Found by the fuzzer: tokenizers raises a bare Exception for a corrupt tokenizer.json."""
    import shutil

    from hce_serve.encoder import Encoder
    from hce_serve.errors import FormatError

    exp = tmp_path / "exp"
    shutil.copytree(tiny_export, exp)
    (exp / "tokenizer.json").write_bytes(b'{\n  "version": "1.0",\n  "trunc')
    with pytest.raises(FormatError, match="tokenizer.json: not a readable tokenizer"):
        Encoder(exp)
