"""A lean HTTP/1.1 keep-alive load generator for the HTTP benchmarks (asyncio streams, no client library).

The client shares the 2 cores with the server it measures, so its own CPU per request decides how much
of the machine is left for serving. httpx costs about a millisecond of CPU per request here; this client
writes pre-encoded request bytes and parses only the status line, the headers it needs and the body, so
nearly all the CPU goes to the server. Throughput and latency are reported as measured, with the client
on the same machine (which the results say).

    results = asyncio.run(run_load("127.0.0.1", port, bodies, concurrency=4, total=4000))
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence


class Connection:
    """One keep-alive connection; requests on it are sequential."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def post_bytes(self, path: str, body: bytes) -> bytes:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode("ascii") + body

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send a pre-encoded request; return (status, body)."""
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length, chunked = None, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            return status, b"".join(parts)
        return status, await self.reader.readexactly(length or 0)


async def run_load(host: str, port: int, bodies: Sequence[dict], concurrency: int, total: int,
                   path: str = "/search", check: bool = True) -> dict:
    """Keep ``concurrency`` connections busy until ``total`` requests were answered; bodies cycle.

    Returns qps, per-request latencies (seconds), status counts. ``check`` parses every answer as JSON
    (so a 200 with a broken body counts as an error)."""
    conns = [await Connection(host, port).open() for _ in range(concurrency)]
    raws = [conns[0].post_bytes(path, json.dumps(b).encode()) for b in bodies]
    lat: list[float] = []
    status: dict[int, int] = {}
    bad = 0
    counter = iter(range(total))

    async def worker(c: Connection) -> None:
        nonlocal bad
        for i in counter:
            t = time.perf_counter()
            code, body = await c.send(raws[i % len(raws)])
            lat.append(time.perf_counter() - t)
            status[code] = status.get(code, 0) + 1
            if check and code == 200:
                try:
                    json.loads(body)
                except ValueError:
                    bad += 1

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    wall = time.perf_counter() - t0
    return {"qps": total / wall, "latencies": lat, "status": status, "bad_bodies": bad, "wall_s": wall}


async def sequential(host: str, port: int, bodies: Sequence[dict], n: int, path: str = "/search") -> list[float]:
    """``n`` requests one after another on one connection; per-request seconds."""
    c = await Connection(host, port).open()
    raws = [c.post_bytes(path, json.dumps(b).encode()) for b in bodies]
    out = []
    try:
        for i in range(n):
            t = time.perf_counter()
            code, _ = await c.send(raws[i % len(raws)])
            out.append(time.perf_counter() - t)
            if code != 200:
                raise RuntimeError(f"HTTP {code} from {path}")
    finally:
        c.close()
    return out
