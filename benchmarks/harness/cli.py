"""The command line every study shares: ``--out`` (and ``--quick``), logging and offline model loading, and
the command-line tools of this interpreter's environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.harness.paths import result_path


def study_parser(doc: str, name: str, quick: bool = True, whole_doc: bool = False) -> argparse.ArgumentParser:
    """A parser with the options every study has: ``--out`` (and ``--quick``); its description is the
    module docstring's first paragraph, or all of it (as written) with ``whole_doc``."""
    ap = (argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter) if whole_doc
          else argparse.ArgumentParser(description=doc.split("\n\n")[0]))
    if quick:
        ap.add_argument("--quick", action="store_true", help="the small setting (smoke runs, minutes)")
    ap.add_argument("--out", default=None, help=f"results: a name under benchmarks/results or a .json path [{name}"
                    + (f"; {name}-quick with --quick]" if quick else "]"))
    ap.set_defaults(result_name=name)
    return ap


def parse(ap: argparse.ArgumentParser, argv: Sequence[str] | None,
          default_out: Callable[[argparse.Namespace], str] | None = None) -> argparse.Namespace:
    """Parse, resolve ``--out`` to a path, and set up logging (INFO to stderr) and offline model loading.
    ``default_out(args)``: the results name when ``--out`` is not given, for a study whose file depends on its
    options (otherwise the parser's name, ``-quick`` with ``--quick``)."""
    args = ap.parse_args(argv)
    quick = getattr(args, "quick", False)
    default = default_out(args) if default_out else (f"{args.result_name}-quick" if quick else args.result_name)
    args.out = result_path(args.out or default)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return args


def tool_argv(name: str = "hce-serve") -> list[str]:
    """A command-line tool (``hce-serve``, ``hce-train``, ``hce-export``) of this interpreter's environment."""
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [sys.executable, "-m", name.replace("-", "_") + ".cli"]
