"""What every HCE command line shares: logging setup, ``--version``, ``-v``/``-q``, errors -> exit codes.

Exit codes: 0 success, 1 an error the user can fix (one line on stderr, no traceback), 2 bad usage
(click's own UsageError/BadParameter). Results go to stdout, logs and progress bars to stderr.

``HCEGroup`` gives every group and every command of ``hce-train``, ``hce-export`` and ``hce-serve`` the
same ``--version`` and the same ``-v``/``-q``, accepted before or after the command name
(``hce-serve -q http …`` and ``hce-serve http -q …`` mean the same): one place, three CLIs.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from typing import Any

import click

from ..errors import HCEError

_STATE = "hce.verbosity"  # root context meta: the -v count and -q seen anywhere on the command line


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Our packages log at INFO (DEBUG with -vv, WARNING with -q); third-party libraries only warnings.

    Inside a command line, the -v/-q given anywhere on it add up. onnxruntime's quantiser, for one, logs
    every tensor at INFO on the root logger.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        state = ctx.find_root().meta.setdefault(_STATE, {"verbose": 0, "quiet": False})
        state["verbose"] = verbose = max(state["verbose"], verbose)
        state["quiet"] = quiet = state["quiet"] or quiet
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=logging.DEBUG if verbose > 2 else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for name in ("hce_serve", "hce_train", "hce_export", "benchmarks"):
        logging.getLogger(name).setLevel(level)


def one_line(msg: object) -> str:
    return " ".join(str(msg).split()) or type(msg).__name__


def _verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if not ctx.resilient_parsing:
        setup_logging(value if param.name == "verbose" else 0, bool(value) if param.name == "quiet" else False)


def _version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from .. import __version__

        click.echo(f"{ctx.find_root().info_name} {__version__}")
        ctx.exit()


VERBOSE_HELP, QUIET_HELP = "More logging (-vv for debug).", "Only warnings and errors on stderr."


def _common_params(cmd: click.Command) -> None:
    """Add ``--version`` and ``-v``/``-q`` to a command that lacks them (values go to logging, not to it)."""
    names = {p.name for p in cmd.params}
    if "version" not in names:
        cmd.params.append(click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                                       callback=_version, help="Print the version and exit."))
    if "verbose" not in names and "quiet" not in names:
        cmd.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_verbosity,
                                       help=VERBOSE_HELP))
        cmd.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_verbosity,
                                       help=QUIET_HELP))


class HCEGroup(click.Group):
    """A click group whose subcommands' project errors become ``Error: <one line>`` and exit 1, and whose
    commands all answer ``--version``, ``-v`` and ``-q``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _common_params(self)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _common_params(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HCEError as e:
            raise click.ClickException(one_line(e)) from None
        except MemoryError:
            raise click.ClickException("out of memory; try a smaller --batch-size") from None
        except sqlite3.Error as e:  # the document store: disk full, locked by another program, corrupt
            raise click.ClickException(one_line(f"document store: {e}")) from None
        except OSError as e:
            # Disk full, permission denied, a path that is a folder: the user can fix these.
            if isinstance(e, BrokenPipeError):
                sys.stderr.close()
                raise SystemExit(1) from None
            raise click.ClickException(one_line(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))) from None


def verbosity_options(f: Any) -> Any:
    """``-v``/``-q`` passed to the command function (which calls ``setup_logging`` with them)."""
    f = click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)(f)
    f = click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)(f)
    return f
