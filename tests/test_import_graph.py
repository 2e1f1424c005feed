"""The packages' import structure, measured from the source by scripts/import_graph.py (issue 31's targets).

No import circle in any package: a circle means neither module can be read, tested or replaced alone. The
issue's size targets for hce_serve: at most 10 import levels (met), and at most 100 arrows and no module over
300 lines (not met yet: the measured numbers are in the xfail reason); that test is a strict xfail, so it turns
into a failure the day they are met, and its mark must then go.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import import_graph  # noqa: E402

MAX_LEVELS, MAX_ARROWS, MAX_LINES = 10, 100, 300


@pytest.mark.parametrize("package", ["hce_serve", "hce_train", "hce_export"])
def test_no_import_circle(package):
    assert import_graph.graph(package, ROOT).cycles() == []


def test_the_graph_reads_relative_lazy_and_typing_only_imports(tmp_path):
    """The measure itself: a lazy import is an arrow, a TYPE_CHECKING one is not, a circle is found."""
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\nx = 1\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import y\n")
    g = import_graph.graph("p", tmp_path)
    assert g.edges == {"p": set(), "p.sub": set(), "p.a": {"p.b"}, "p.b": {"p.sub.c"}, "p.sub.c": set()}
    assert (g.arrows, max(g.levels().values()), g.cycles()) == (2, 3, [])
    assert import_graph.graph("p", tmp_path, typing=True).cycles() == [["p.a", "p.b", "p.sub.c"]]


def _measured() -> tuple[int, int, list[str]]:
    g = import_graph.graph("hce_serve", ROOT)
    long = [f"{p.relative_to(ROOT)} ({n})" for p in g.modules.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    return max(g.levels().values()), g.arrows, long


def test_hce_serve_has_at_most_ten_import_levels():
    levels, _, _ = _measured()
    assert levels <= MAX_LEVELS


@pytest.mark.xfail(strict=True, reason="issue 31 targets not met: hce_serve measured 260 arrows (71 modules), and "
                                       "engine.py and folder/store.py over 300 lines; see the report")
def test_hce_serve_meets_the_arrow_and_module_size_targets():
    _, arrows, long = _measured()
    assert arrows <= MAX_ARROWS and not long, (arrows, long)
