"""The load generator of bench/ingest.py: a minimal asyncio HTTP/1.1 client, closed and open loop.

Closed loop: ``concurrency`` keep-alive connections, each posting its next event as soon as
the last one is answered. Several servers are measured in interleaved rounds (A, B, A, B, ...)
so that a machine whose speed drifts during the run (other work on it) weighs on each alike.
Open loop: request i leaves at t0 + i / rate whether or not earlier ones were answered, and its
latency counts from that moment, so queueing in the server is not hidden.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable

Body = Callable[[int], bytes]


class Conn:
    """One keep-alive HTTP/1.1 connection; just enough client to time requests cheaply."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key

    async def open(self) -> Conn:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def post(self, path: str, body: bytes) -> int:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        self.writer.close()


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.partition(b"\r\n\r\n")[2]


def summary(prefix: str, latencies: list[float], seconds: float | None, errors: int) -> dict:
    """req/s (when ``seconds`` is given: closed loop), p50 and p99 in ms, and the non-201 count."""
    latencies = sorted(latencies)
    out: dict = {}
    if seconds is not None:
        out[f"{prefix}_req_per_s"] = round(len(latencies) / seconds, 1)
    if latencies:
        out[f"{prefix}_p50_ms"] = round(1000 * statistics.median(latencies), 2)
        out[f"{prefix}_p99_ms"] = round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2)
    return out | {f"{prefix}_errors": errors}


async def _closed(port: int, key: str, body: Body, ids, *, concurrency: int, seconds: float,
                  latencies: list[float] | None) -> int:
    """One closed-loop segment; appends the latencies (unless None: warm-up); returns the non-201 count."""
    conns = [await Conn(port, key).open() for _ in range(concurrency)]
    t_end = time.perf_counter() + seconds
    errors = 0

    async def worker(c: Conn) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < t_end:
            status = await c.post("/v1/feedback", body(next(ids)))
            if latencies is not None:
                latencies.append(time.perf_counter() - now)
                errors += status != 201

    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        c.close()
    return errors


async def closed_rounds(servers: dict[str, tuple[int, str]], body: Body, *, concurrency: int, seconds: float,
                        warmup: float, rounds: int) -> dict:
    """Each server (name -> (port, key)) gets ``warmup`` seconds, then ``seconds`` in ``rounds`` interleaved
    segments."""
    ids = itertools.count()
    latencies: dict[str, list[float]] = {name: [] for name in servers}
    errors = dict.fromkeys(servers, 0)
    for port, key in servers.values():
        await _closed(port, key, body, ids, concurrency=concurrency, seconds=warmup, latencies=None)
    for _ in range(rounds):
        for name, (port, key) in servers.items():
            errors[name] += await _closed(port, key, body, ids, concurrency=concurrency, seconds=seconds / rounds,
                                          latencies=latencies[name])
    out: dict = {}
    for name in servers:
        out |= summary(name, latencies[name], seconds, errors[name])
    return out


async def open_loop(port: int, key: str, body: Body, *, prefix: str, rate: float, seconds: float,
                    warmup: float) -> dict:
    """p50/p99 of requests offered at ``rate`` per second (an idle connection each, or a new one)."""
    idle: list[Conn] = []
    latencies: list[float] = []
    errors = 0
    t0 = time.perf_counter() + 0.05
    t_measure = t0 + warmup

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        conn = idle.pop() if idle else await Conn(port, key).open()
        try:
            status = await conn.post("/v1/feedback", body(i))
        except ConnectionError:  # idle past the server's keep-alive timeout: send again on a new one
            conn = await Conn(port, key).open()
            status = await conn.post("/v1/feedback", body(i))
        done = time.perf_counter()
        idle.append(conn)
        if scheduled >= t_measure:
            latencies.append(done - scheduled)
            errors += status != 201

    tasks = []
    for i in range(int((warmup + seconds) * rate)):
        scheduled = t0 + i / rate
        if (delay := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    for c in idle:
        c.close()
    return summary(prefix, latencies, None, errors) | {f"{prefix}_offered_req_per_s": round(rate, 1)}
