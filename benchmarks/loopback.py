"""The HTTP side of the harness: ``hce-serve http`` in a child process on loopback, and the lean load
client the HTTP studies drive it with (HTTP/1.1 keep-alive connections on asyncio streams).

The client shares the 2 cores with the server it measures, so its own CPU per request decides how much
of the machine is left for serving. httpx costs about a millisecond of CPU per request here; this client
writes pre-encoded request bytes and parses only the status line, the headers it needs and the body, so
nearly all the CPU goes to the server. Throughput and latency are reported as measured, with the client
on the same machine (which the results say).

    with start_server(index_dir, ["--read-only"]) as server:
        results = asyncio.run(run_load(server.port, bodies, concurrency=4, total=4000))
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from benchmarks.harness import cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """An ``hce-serve http`` child process on 127.0.0.1; its stderr goes to a file (a pipe nobody reads
    would fill up and stall it). A context manager that stops the server on exit."""

    proc: subprocess.Popen
    port: int
    log: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr_tail(self, chars: int = 500) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.close()


def start_server(index: Path, args: Sequence[str] = (), timeout: float = 120.0) -> Server:
    """``hce-serve http --index INDEX ARGS`` on a free loopback port; returns once /healthz answers 200."""
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - the Server owns it and closes it on stop
    proc = subprocess.Popen([*cli.tool_argv(), "-q", "http", "--index", str(index), "--host", "127.0.0.1",
                             "--port", str(port), *args], stdout=subprocess.DEVNULL, stderr=log)
    server = Server(proc, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hce-serve http exited with {proc.returncode}: {server.stderr_tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()
    server.__exit__()
    raise RuntimeError(f"hce-serve http did not answer /healthz within {timeout:.0f} s")


# ---- the load client ------------------------------------------------------------------------------------
HOST = "127.0.0.1"


def request_bytes(method: str, path: str, body: bytes | None = None, port: int = 0) -> bytes:
    """One pre-encoded request (JSON body or none)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("ascii") + (body or b"")


class Connection:
    """One keep-alive connection to 127.0.0.1:``port``; requests on it are sequential."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(self, method: str, path: str, obj: object = None) -> tuple[int, bytes]:
        """Send ``obj`` (JSON-encoded, if given) to ``path``; return (status, body)."""
        body = None if obj is None else json.dumps(obj).encode()
        return await self.send(request_bytes(method, path, body, self.port))

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send a pre-encoded request; return (status, body). A closed connection is ConnectionError."""
        if self.reader is None or self.writer is None:
            raise ConnectionError("connection not open")
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
        if not chunked:
            return status, await self.reader.readexactly(length or 0)
        parts = []
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                return status, b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readline()


async def run_load(port: int, bodies: Sequence[dict], concurrency: int, total: int, path: str = "/search",
                   check: bool = True) -> dict:
    """Keep ``concurrency`` connections busy until ``total`` requests were answered; bodies cycle.

    Returns qps, per-request latencies (seconds), status counts. ``check`` parses every answer as JSON
    (so a 200 with a broken body counts as an error)."""
    conns = [await Connection(port).open() for _ in range(concurrency)]
    raws = [request_bytes("POST", path, json.dumps(b).encode(), port) for b in bodies]
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


async def sequential(port: int, bodies: Sequence[dict], n: int, path: str = "/search") -> list[float]:
    """``n`` requests one after another on one connection; per-request seconds."""
    c = await Connection(port).open()
    raws = [request_bytes("POST", path, json.dumps(b).encode(), port) for b in bodies]
    out = []
    try:
        for i in range(n):
            t = time.perf_counter()
            code, body = await c.send(raws[i % len(raws)])
            out.append(time.perf_counter() - t)
            if code != 200:
                raise RuntimeError(f"HTTP {code} from {path}: {body[:200]!r}")
    finally:
        c.close()
    return out
