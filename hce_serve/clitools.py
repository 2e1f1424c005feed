"""What every HCE command line shares: logging setup and turning project errors into exit codes.

Exit codes: 0 success, 1 an error the user can fix (one line on stderr, no traceback), 2 bad usage
(click's own UsageError/BadParameter). Results go to stdout, logs and progress bars to stderr.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from .errors import HCEError


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Our packages log at INFO (DEBUG with -vv, WARNING with -q); third-party libraries only warnings.

    onnxruntime's quantiser, for one, logs every tensor at INFO on the root logger.
    """
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


class HCEGroup(click.Group):
    """A click group whose subcommands' project errors become ``Error: <one line>`` and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HCEError as e:
            raise click.ClickException(one_line(e)) from None
        except MemoryError:
            raise click.ClickException("out of memory; try a smaller --batch-size") from None
        except OSError as e:
            # Disk full, permission denied, a path that is a folder: the user can fix these.
            if isinstance(e, BrokenPipeError):
                sys.stderr.close()
                raise SystemExit(1) from None
            raise click.ClickException(one_line(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))) from None


def verbosity_options(f: Any) -> Any:
    f = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")(f)
    f = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")(f)
    return f
