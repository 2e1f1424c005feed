"""What the three command lines share (clitools.HCEGroup): --version on every command, -v/-q accepted in
the same places everywhere, and the one version string."""

from __future__ import annotations

import logging

import click
import pytest
from click.testing import CliRunner

import hce_serve


def clis() -> list[click.Group]:
    from hce_serve.cli import main as serve

    out = [serve]
    for name in ("hce_train.cli", "hce_export.cli"):
        try:
            out.append(__import__(name, fromlist=["main"]).main)
        except ImportError:  # a role's extra is not installed here
            pass
    return out


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for name, cmd in group.commands.items():
        out += commands(cmd, (*path, name)) if isinstance(cmd, click.Group) else [(*path, name)]
    return out


@pytest.mark.parametrize("cli", clis(), ids=lambda c: c.name)
def test_every_command_answers_version(cli):
    for path in commands(cli):
        res = CliRunner().invoke(cli, [*path, "--version"], prog_name="prog")
        assert res.exit_code == 0 and res.output.strip() == f"prog {hce_serve.__version__}", (path, res.output)


@pytest.mark.parametrize("cli", clis(), ids=lambda c: c.name)
def test_verbose_and_quiet_on_every_command_and_group(cli):
    for path in commands(cli):
        cmd = cli
        for name in path:
            cmd = cmd.commands[name]
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-v", "--verbose", "-q", "--quiet"} <= opts, path


def test_verbosity_before_or_after_the_command_means_the_same(tmp_path):
    from hce_serve.cli import main

    logger = logging.getLogger("hce_serve")
    for args, level in ((["-q", "index", "stats"], logging.WARNING), (["index", "stats", "-q"], logging.WARNING),
                        (["index", "-vv", "stats"], logging.DEBUG), (["index", "stats"], logging.INFO)):
        res = CliRunner().invoke(main, [*args, "--index", str(tmp_path / "none")])
        assert res.exit_code == 1 and "index folder not found" in res.output  # ran, and failed cleanly
        assert logger.level == level, args


def test_one_version_source():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "version" in meta["project"]["dynamic"] and "version" not in meta["project"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hce_serve.__version__"}


def test_train_and_export_take_version_and_max_lengths_from_serving():
    """One source each (hce_serve: __version__, defaults.py): no other package retypes them."""
    import re
    from pathlib import Path

    import hce_export
    import hce_train
    from hce_serve import defaults
    from hce_train.cli import main as train_main
    from hce_train.config import TrainConfig

    assert hce_train.__version__ == hce_export.__version__ == hce_serve.__version__
    cfg = TrainConfig()
    assert (cfg.query_max_length, cfg.doc_max_length) == (defaults.QUERY_MAX_LENGTH, defaults.DOC_MAX_LENGTH)
    fit_help = CliRunner().invoke(train_main, ["fit", "--help"]).output
    assert f"Query tokens [{defaults.QUERY_MAX_LENGTH}]" in fit_help
    assert f"Document tokens [{defaults.DOC_MAX_LENGTH}]" in fit_help
    literal = re.compile(r"__version__\s*=\s*['\"]|max_length\s*(:\s*int)?\s*=\s*\d|qlen, dlen = \d")
    root = Path(__file__).resolve().parents[1]
    for pkg in ("hce_train", "hce_export"):
        for path in sorted((root / pkg).glob("*.py")):
            hits = [line.strip() for line in path.read_text().splitlines() if literal.search(line)]
            assert not hits, f"{path.name} retypes a value hce_serve owns: {hits}"
