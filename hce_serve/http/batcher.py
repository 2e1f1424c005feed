"""Micro-batching for the HTTP server: concurrent search requests share one encoder call.

Queries encoded together cost less each than one at a time (an onnxruntime run's fixed cost and the Python
around it are paid once, and the matrix products run on more rows), so the server answers more queries per
second when the queries of requests that arrive together are encoded together. Only the encoding is shared:
each request keeps its own k, filter, ef, subtree, mode, fusion and fields (``Engine.run_searches``). With a
row-independent graph (fp32, fp16) it gets the hits it would get alone; int8's dynamic quantization scales a
whole call's activations together, so there a query's embedding moves slightly with its batch-mates
(``benchmarks.http`` measures what that does to the hits).

The event loop checks a request (``Engine.prepare_search``), queues it and awaits its answer. ``workers``
threads run batches; each runs ``Engine.run_searches`` on what it took and renders every answer to JSON bytes
(``render``) before the one hand-back to the loop (``call_soon_threadsafe``). When a worker is free, the queue
is dispatched:

- at once when no batch is running: nothing else is being served, so a lone request never waits;
- at once when the queue holds ``max_queries`` queries (one batch takes at most that many, and a request
  with more is a batch of its own);
- otherwise when its oldest request has waited ``max_wait`` seconds: while another batch is encoding, the
  requests that arrive meanwhile join this one instead of each paying for its own encoder call.

``max_wait`` 0 turns micro-batching off: every request is its own encoder call (the serving path before it).
All state below is touched on the event loop's thread only; the workers see just the batch they run.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import defaults


@dataclass(frozen=True)
class Batching:
    """How ``hce-serve http`` batches searches: ``max_wait_ms`` (0: off), ``max_queries`` per encoder call, and
    ``workers`` threads running batches (None: the cores divided by onnxruntime's threads per call)."""

    max_wait_ms: float = defaults.HTTP_MAX_BATCH_WAIT_MS
    max_queries: int = defaults.HTTP_MAX_BATCH_QUERIES
    workers: int | None = None

    def worker_count(self, threads: int | None) -> int:
        return self.workers or max(1, available_cores() // max(1, threads or 1))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class _Item:
    request: Any  # engine.SearchRequest
    meta: Any  # what ``render`` needs besides the rows (the response's shape)
    future: asyncio.Future
    queued: float  # loop.time() when it was queued
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.request.texts)


@dataclass
class BatchStats:
    """Counters for ``/stats``: batches run, requests and queries they held, and the largest."""

    batches: int = 0
    requests: int = 0
    queries: int = 0
    largest: int = 0

    def to_dict(self) -> dict[str, Any]:
        mean = round(self.requests / self.batches, 2) if self.batches else None
        return {"batches": self.batches, "requests": self.requests, "queries": self.queries,
                "largest_batch": self.largest, "mean_requests_per_batch": mean}


class SearchBatcher:
    """Queue of checked searches, dispatched in batches to ``workers`` threads (see the module docstring).

    ``run(requests)`` runs a batch and returns, per request, its rows or the exception it raised;
    ``render(rows, meta)`` turns one request's rows into its response body.
    """

    def __init__(self, run: Callable[[list[Any]], list[Any]], render: Callable[[Any, Any], bytes], *,
                 max_wait: float, max_queries: int, workers: int) -> None:
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, found {max_wait}")
        if max_queries < 1 or workers < 1:
            raise ValueError(f"max_queries and workers must be >= 1, found {max_queries} and {workers}")
        self.max_wait, self.max_queries, self.workers = max_wait, max_queries, workers
        self._run, self._render = run, render
        self._pending: deque[_Item] = deque()
        self._busy = 0
        self._timer: asyncio.TimerHandle | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # batches for the worker threads; None stops one
        self._threads: list[threading.Thread] = []
        self.stats = BatchStats()

    @property
    def enabled(self) -> bool:
        return self.max_wait > 0

    async def submit(self, request: Any, meta: Any = None) -> bytes:
        """Queue one checked search; its response body once its batch has run (its own exception re-raised)."""
        loop = asyncio.get_running_loop()
        item = _Item(request, meta, loop.create_future(), loop.time())
        self._pending.append(item)
        self._dispatch(loop)
        return await item.future

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
        self._threads.clear()

    # ---- on the event loop ---------------------------------------------------------------------------------
    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while True:
            while self._pending and self._pending[0].future.done():  # its client went away before it ran
                self._pending.popleft()
            if not self._pending or self._busy >= self.workers:
                return
            if self.enabled and self._busy and not self._full():
                wait = self._pending[0].queued + self.max_wait - loop.time()
                if wait > 0:
                    self._timer = loop.call_later(wait, self._dispatch, loop)
                    return
            self._start(loop, self._take())

    def _full(self) -> bool:
        n = 0
        for item in self._pending:
            n += item.size
            if n >= self.max_queries:
                return True
        return False

    def _take(self) -> list[_Item]:
        batch = [self._pending.popleft()]
        if not self.enabled:
            return batch
        n = batch[0].size
        while self._pending and n + self._pending[0].size <= self.max_queries:
            item = self._pending.popleft()
            if not item.future.done():  # a cancelled request is dropped, not run
                n += item.size
                batch.append(item)
        return batch

    def _start(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._serve, name=f"hce-search-{i}", daemon=True)
                             for i in range(self.workers)]
            for t in self._threads:
                t.start()
        self._busy += 1
        s = self.stats
        s.batches, s.requests = s.batches + 1, s.requests + len(batch)
        s.queries += sum(i.size for i in batch)
        s.largest = max(s.largest, len(batch))
        self._queue.put((loop, batch))

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list[_Item], answers: list[Any]) -> None:
        self._busy -= 1
        for item, answer in zip(batch, answers, strict=True):
            if item.future.done():  # the client went away and its handler was cancelled
                continue
            if isinstance(answer, BaseException):
                item.future.set_exception(answer)
            else:
                item.future.set_result(answer)
        self._dispatch(loop)

    # ---- on a worker thread --------------------------------------------------------------------------------
    def _serve(self) -> None:
        """A worker: run the batches handed to it; each answer goes back to the loop in one call."""
        while (job := self._queue.get()) is not None:
            loop, batch = job
            try:
                answers = self._work(batch)
            except BaseException as e:  # noqa: BLE001 - every request of the batch gets it
                answers = [e] * len(batch)
            try:
                loop.call_soon_threadsafe(self._finish, loop, batch, answers)
            except RuntimeError:  # the loop closed (shutdown): nobody waits for these answers
                pass

    def _work(self, batch: list[_Item]) -> list[bytes | BaseException]:
        results = self._run([item.request for item in batch])
        out: list[bytes | BaseException] = []
        for item, rows in zip(batch, results, strict=True):
            if isinstance(rows, BaseException):
                out.append(rows)
                continue
            try:
                out.append(self._render(rows, item.meta))
            except Exception as e:  # a value the JSON encoder refuses: this request's fault alone
                out.append(e)
        return out
