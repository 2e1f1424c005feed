"""Model card and index manifest: round trip, version refusal, corruption messages."""

from __future__ import annotations

import json

import pytest

from hce_serve.errors import FormatError, VersionError
from hce_serve.folder.manifest import MANIFEST_NAME, MANIFEST_VERSION, IndexManifest, file_digest
from hce_serve.formats.card import CARD_NAME, ModelCard


def test_card_round_trip(tmp_path):
    card = ModelCard(dim=384, base_model="all-MiniLM-L6-v2", max_length=256, query_max_length=64,
                     tree={"levels": 2, "nodes": 340}, onnx={"files": {"fp32": "model.onnx"}})
    card.save(tmp_path)
    raw = json.loads((tmp_path / CARD_NAME).read_text())
    assert raw["format"] == "hce-model" and raw["format_version"] == 1
    assert ModelCard.load(tmp_path) == card


def test_card_refuses_newer_version_naming_both(tmp_path):
    ModelCard(dim=8, base_model="x").save(tmp_path)
    raw = json.loads((tmp_path / CARD_NAME).read_text())
    raw["format_version"] = 7
    (tmp_path / CARD_NAME).write_text(json.dumps(raw))
    with pytest.raises(VersionError, match=r"format_version 7 is newer than this hce supports \(1\)"):
        ModelCard.load(tmp_path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("dim"), "missing field 'dim'"),
        (lambda r: r.update(dim="384"), "field 'dim' must be int"),
        (lambda r: r.update(dim=True), "field 'dim' must be int"),
        (lambda r: r.update(pooling="max"), "pooling must be one of"),
        (lambda r: r.update(format="hce-index"), "expected format 'hce-model', found 'hce-index'"),
        (lambda r: r.update(format_version=0), "format_version must be a positive integer"),
    ],
)
def test_card_corruption_is_named(tmp_path, mutate, message):
    ModelCard(dim=8, base_model="x").save(tmp_path)
    raw = json.loads((tmp_path / CARD_NAME).read_text())
    mutate(raw)
    (tmp_path / CARD_NAME).write_text(json.dumps(raw))
    with pytest.raises(FormatError, match=message):
        ModelCard.load(tmp_path)


def test_card_truncated_and_binary(tmp_path):
    ModelCard(dim=8, base_model="x").save(tmp_path)
    p = tmp_path / CARD_NAME
    p.write_text(p.read_text()[:20])
    with pytest.raises(FormatError, match="not valid JSON"):
        ModelCard.load(tmp_path)
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FormatError, match="not UTF-8"):
        ModelCard.load(tmp_path)
    with pytest.raises(FormatError, match="file not found"):
        ModelCard.load(tmp_path / "nope")


def _manifest(tmp_path, **kw):
    data = tmp_path / "ids.txt"
    data.write_text("a\nb\n")
    args = dict(dim=4, space="ip", M=16, ef_construction=200, ef_search=100,
                counts={"labels": 2, "live": 2, "deleted": 0}, files={"ids.txt": file_digest(data)})
    args.update(kw)
    return IndexManifest(**args)


def test_manifest_round_trip_and_verify(tmp_path):
    m = _manifest(tmp_path, generation=3)
    m.save(tmp_path)
    loaded = IndexManifest.load(tmp_path)
    assert loaded == m
    loaded.verify_files(tmp_path)


def test_manifest_detects_truncation_and_bitflip(tmp_path):
    m = _manifest(tmp_path)
    m.save(tmp_path)
    (tmp_path / "ids.txt").write_text("a\n")
    with pytest.raises(FormatError, match=r"manifest says 4 bytes, found 2"):
        m.verify_files(tmp_path)
    (tmp_path / "ids.txt").write_text("a\nc\n")
    with pytest.raises(FormatError, match="sha256 differs"):
        m.verify_files(tmp_path)
    (tmp_path / "ids.txt").unlink()
    with pytest.raises(FormatError, match="listed in the manifest but missing"):
        m.verify_files(tmp_path)


def test_manifest_inconsistent_counts_and_missing_folder(tmp_path):
    with pytest.raises(FormatError, match=r"live \(2\) \+ deleted \(1\) != labels \(2\)"):
        _manifest(tmp_path, counts={"labels": 2, "live": 2, "deleted": 1})
    with pytest.raises(FormatError, match="not an HCE index folder"):
        IndexManifest.load(tmp_path / "empty")
    raw = {"format": "hce-index", "format_version": MANIFEST_VERSION + 1}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(VersionError, match=f"format_version {MANIFEST_VERSION + 1}"):
        IndexManifest.load(tmp_path)
