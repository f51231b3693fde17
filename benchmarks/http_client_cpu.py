"""CPU cost per request of the HTTP clients a load generator could use, on this machine.

Why it exists: the load generator runs on the same 2 cores as the HP service it
measures, so its own CPU per request decides how much it disturbs the latency
it records. Prints one line per client and writes benchmarks/results/http_client_cpu.csv.

    .venv/bin/python benchmarks/http_client_cpu.py [--requests 2000]
"""

from __future__ import annotations

import asyncio
import csv
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import click
import httpx

RESULTS = Path(__file__).resolve().parent / "results" / "http_client_cpu.csv"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        body = b'{"score": 0.5}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


async def _aiohttp(url: str, n: int) -> float:
    async with aiohttp.ClientSession() as s:
        t = time.thread_time()
        for i in range(n):
            async with s.get(url, params={"tx": str(i)}) as r:
                await r.read()
        return time.thread_time() - t


async def _httpx(url: str, n: int) -> float:
    async with httpx.AsyncClient() as s:
        t = time.thread_time()
        for i in range(n):
            await s.get(url, params={"tx": str(i)})
        return time.thread_time() - t


@click.command()
@click.option("--requests", "n", default=2000, show_default=True, help="Sequential requests per client.")
def main(n: int) -> None:
    """Client-thread CPU time per request (the server runs in other threads, so it is not counted)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/score"
    clients: dict[str, Callable[[str, int], Awaitable[float]]] = {"aiohttp": _aiohttp, "httpx": _httpx}
    rows = []
    for name, run in clients.items():
        ms = asyncio.run(run(url, n)) / n * 1000  # type: ignore[arg-type]
        rows.append({"client": name, "requests": n, "cpu_ms_per_request": round(ms, 3)})
        click.echo(f"{name:8s} {ms:.3f} ms CPU/request")
    server.shutdown()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    click.echo(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
