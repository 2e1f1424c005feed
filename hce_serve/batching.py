"""Streams a person waits for: a corpus cut into bounded steps, and a progress bar over them on stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

from . import defaults
from .errors import ConfigError

T = TypeVar("T")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter): a corpus streamed in bounded batches."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= defaults.MAX_BATCH_SIZE:
        raise ConfigError(f"batch size must be an integer from 1 to {defaults.MAX_BATCH_SIZE:,}, found {size!r}")
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def progress_bar(total: int | None, enabled: bool, desc: str, unit: str = "doc") -> Any:
    """A tqdm bar on stderr (a context manager); when not ``enabled`` it counts silently."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=not enabled)
