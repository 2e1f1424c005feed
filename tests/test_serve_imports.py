"""hce_serve never pulls in torch/transformers/optimum: not on import, not in `hce-serve --help`."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("torch", "transformers", "optimum")

CHECK = """
import sys, importlib
import pkgutil, hce_serve
for m in pkgutil.walk_packages(hce_serve.__path__, "hce_serve."):  # every module of the package
    importlib.import_module(m.name)
from hce_serve.http import create_app  # builds nothing, but imports FastAPI lazily on call only
from click.testing import CliRunner
from hce_serve.cli import main
for args in (["--help"], ["index", "--help"], ["search", "--help"], ["http", "--help"], ["get", "--help"]):
    assert CliRunner().invoke(main, args).exit_code == 0, args
bad = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden})
print(",".join(bad))
"""


def test_no_torch_in_serving_imports_or_help():
    code = CHECK.format(forbidden=set(FORBIDDEN))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"serving imported {out.stdout.strip()}"


def test_cli_search_and_entry_point_import_no_torch(tiny_export, tiny_beir, tmp_path):
    """A real `hce-serve search` (onnxruntime + tokenizers + hnswlib) and the installed script stay torch-free."""
    import shutil

    from hce_serve.engine import Engine

    idx = tmp_path / "idx"
    Engine.build(tiny_export, tiny_beir / "corpus.jsonl", idx)
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from hce_serve.cli import main\n"
        f"r = CliRunner().invoke(main, ['search', '--index', {str(idx)!r}, 'protein', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {set(FORBIDDEN)!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    script = shutil.which("hce-serve")
    if script:
        res = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "index" in res.stdout
