"""Versioned, self-describing JSON documents: the shared reader/writer behind every HCE card.

Each document carries ``format`` (what it is) and ``format_version`` (an integer). A reader accepts its
own format at any version up to the one it knows and refuses newer ones, naming both numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import FormatError, VersionError
from . import atomic


def read_versioned_json(path: str | os.PathLike[str], fmt: str, max_version: int) -> dict[str, Any]:
    """Read a JSON card and check its ``format`` and ``format_version``."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: file not found (expected a {fmt} card)")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise FormatError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{p}: expected a JSON object, found {type(obj).__name__}")
    found = obj.get("format")
    if found != fmt:
        raise FormatError(f"{p}: expected format {fmt!r}, found {found!r}")
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"{p}: format_version must be a positive integer, found {version!r}")
    if version > max_version:
        raise VersionError(
            f"{p}: format_version {version} is newer than this hce supports ({max_version}); "
            "upgrade hce to read it"
        )
    return obj


def write_versioned_json(path: str | os.PathLike[str], fmt: str, version: int, body: dict[str, Any]) -> None:
    """Write ``body`` with ``format``/``format_version`` set, atomically."""
    atomic.write_json(path, {"format": fmt, "format_version": version, **body})


def require(obj: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    """Fetch ``obj[key]`` and check its type, with a message naming the file and the key."""
    if key not in obj:
        raise FormatError(f"{where}: missing field {key!r}")
    val = obj[key]
    if not isinstance(val, types) or (isinstance(val, bool) and bool not in _as_tuple(types)):
        names = "/".join(t.__name__ for t in _as_tuple(types))
        raise FormatError(f"{where}: field {key!r} must be {names}, found {val!r}")
    return val


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)
