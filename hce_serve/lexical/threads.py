"""The process's threads for lexical work: ``pool("side")`` runs hybrid's lexical side beside the encoder,
``pool("slice")`` a slice of one large BM25 top-k beside the calling thread (``topk.top_k``).

Two pools, because a side task waits on its slices: were both in one pool, sides filling it would wait forever
on slices queued behind them. Each pool is made on first use and forgotten in a forked child (which has none of
its parent's threads).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_POOLS: dict[str, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def pool(name: str, workers: int) -> ThreadPoolExecutor:
    """The pool ``name``, made with ``workers`` threads on first use (callers pass ``defaults.LEXICAL_THREADS``)."""
    with _LOCK:
        if name not in _POOLS:
            _POOLS[name] = ThreadPoolExecutor(workers, thread_name_prefix=f"hce-lexical-{name}")
        return _POOLS[name]


def _forget() -> None:
    global _LOCK
    _POOLS.clear()
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)
