"""Property-based malformed-input tests over every parser and loader (tests/reliability/fuzz.py, strict mode).

Each target gets a few dozen hypothesis cases here; ``python -m tests.reliability.fuzz --cases 10000`` runs
the same targets at the published size. Allowed outcomes: a clean result or an HCEError; anything else fails
the test with the shrunk input.
"""

from __future__ import annotations

import pytest

pytest.importorskip("hnswlib")

from reliability import fuzz  # noqa: E402

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


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["files"].update({next(iter(m["files"])): None}),  # a file entry that is not an object
        lambda m: m["files"].update({next(iter(m["files"])): [1]}),
        lambda m: m["files"][next(iter(m["files"]))].pop("bytes"),  # size missing
        lambda m: m["counts"].update(capacity=[]),
        lambda m: m.update(extra=[1]),
        lambda m: m["files"].update({"../outside.bin": {"bytes": 1, "sha256": "0" * 64}}),
    ],
)
def test_malformed_manifest_fields_are_format_errors(fuzzer, edit):
    """Found by the fuzzer: these raised AttributeError/TypeError from deep inside the load."""
    import json

    from hce_serve.errors import FormatError
    from hce_serve.folder.store import IndexStore

    m = json.loads(json.dumps(fuzzer.manifest))
    edit(m)
    p = fuzzer._scratch() / "idx"
    import shutil

    shutil.copytree(fuzzer.index_dir, p)
    (p / "manifest.json").write_text(json.dumps(m))
    for writable in (False, True):
        with pytest.raises(FormatError, match="manifest"):
            IndexStore.open(p, writable=writable)


def test_unsupported_zip_version_in_tree_is_a_format_error(fuzzer, tmp_path):
    """Found by the fuzzer: zipfile raises NotImplementedError for an unknown zip version field."""
    import shutil

    from hce_serve.errors import FormatError
    from hce_serve.formats.tree import Tree, load_tree

    shutil.copytree(fuzzer.tree_dir, tmp_path / "t")
    data = bytearray((tmp_path / "t" / "tree.npz").read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # central directory entry: 'version needed to extract' at offset 6
    data[cd + 6] = 163
    (tmp_path / "t" / "tree.npz").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="tree.npz"):
        Tree.load(tmp_path / "t")
    with pytest.raises(FormatError, match="tree.npz"):
        load_tree(tmp_path / "t", 8)  # serving reads the tree only through Tree.load's checks
    (tmp_path / "t" / "tree.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(FormatError, match="tree.npz"):
        load_tree(tmp_path / "t", 8)
    (tmp_path / "t" / "tree_doc_ids.txt").unlink()
    with pytest.raises(FormatError, match="tree"):
        load_tree(tmp_path / "t", 8)


def test_graph_that_loads_but_cannot_run_is_a_format_error(tiny_export):
    """Found by the fuzzer: a bit-flipped model_int8.onnx loaded, then session.run raised onnxruntime's Fail."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    from hce_serve.encoder import Encoder
    from hce_serve.errors import FormatError

    enc = Encoder(tiny_export)

    class Broken:
        def run(self, *a, **k):
            raise Fail("Non-zero status code returned while running Clip node")

    enc.session = Broken()
    with pytest.raises(FormatError, match="failed to run the graph"):
        enc.encode_queries(["a query"])
