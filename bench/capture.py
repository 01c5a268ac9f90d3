"""World capture overhead: the same HTTP requests with capture off and on, in one run.

A local HTTP/1.1 server answers ``/<size>`` with a distinct body of that many bytes each
time (so every body is hashed and written, the worst case for the blob store). For each
size the requests alternate in rounds, off then on, through one keep-alive httpx client
(and requests for 1 KB). "On" includes waiting for every exchange to be written (rows and
blobs) at the end of each round, as the executor does at the end of a run.

    .venv/bin/python bench/capture.py            # prints the table
    .venv/bin/python bench/capture.py --quick    # fewer requests

Targets: under 1 ms added per 1 KB request; 1 MB throughput within 20 % of uncaptured.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import requests

from tether.capture import recording
from tether.store import Store

KB = 1024
MB = 1024 * 1024


def _server() -> tuple[ThreadingHTTPServer, str]:
    counter = itertools.count()
    filler = b"x" * (2 * MB)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else delayed ACKs add 40 ms to every request

        def do_GET(self) -> None:
            same = self.path.startswith("/same/")
            size = int(self.path.rsplit("/", 1)[1])
            head = f'{{"n": {0 if same else next(counter)}, "pad": "'.encode()
            body = head + filler[: max(0, size - len(head) - 2)] + b'"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def _timed(n: int, call: Callable[[], Any], store: Store | None
           ) -> tuple[float, float, float]:
    """For ``n`` calls: wall seconds until the calls returned (what the agent waits
    during its run), wall seconds until everything was also written (what the run's end
    waits for), and process-CPU seconds (every thread: the capture writer too)."""
    cpu = time.process_time()
    if store is None:
        start = time.perf_counter()
        for _ in range(n):
            call()
        calls = time.perf_counter() - start
        return calls, calls, time.process_time() - cpu
    sub = store.submit("bench", f"run-{next(_runs)}")
    assert sub.run_id is not None
    start = time.perf_counter()
    with recording(store, sub.run_id, sub.task_id):
        for _ in range(n):
            call()
        calls = time.perf_counter() - start
    return calls, time.perf_counter() - start, time.process_time() - cpu


_runs = itertools.count()


def measure(store: Store, url: str, *, client: str, size: int, n: int,
            rounds: int, repeated: bool = False) -> dict[str, Any]:
    """Per-request seconds off and on, median over ``rounds``. ``repeated``: the server
    answers the same body every time (stored once: no new blob file after the first)."""
    target = f"{url}/same/{size}" if repeated else f"{url}/{size}"
    if client == "httpx":
        session: Any = httpx.Client()

        def call() -> None:
            session.get(target).content  # noqa: B018 - read the body, as an agent does
    else:
        session = requests.Session()

        def call() -> None:
            session.get(target, timeout=30).content  # noqa: B018

    _timed(max(5, n // 10), call, None)  # warm the connection
    off, on, on_written, off_cpu, on_cpu = [], [], [], [], []
    for _ in range(rounds):
        wall, _, cpu = _timed(n, call, None)
        off.append(wall / n)
        off_cpu.append(cpu / n)
        wall, written, cpu = _timed(n, call, store)
        on.append(wall / n)
        on_written.append(written / n)
        on_cpu.append(cpu / n)
    session.close()
    off_s, on_s = statistics.median(off), statistics.median(on)
    written_s = statistics.median(on_written)
    return {
        "client": client + (" (same)" if repeated else ""), "size": size, "n": n * rounds,
        "off_ms": off_s * 1000,
        "on_ms": on_s * 1000, "added_ms": (on_s - off_s) * 1000,
        "added_written_ms": (written_s - off_s) * 1000,
        "added_cpu_ms": (statistics.median(on_cpu) - statistics.median(off_cpu)) * 1000,
        "off_mbps": size / off_s / MB, "on_mbps": size / written_s / MB,
        "ratio": off_s / written_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--dir", default=".", help="where the temporary store and blobs go "
                        "(default: here; on this machine /tmp creates files 20x slower)")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    httpd, url = _server()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".bench-capture-") as tmp:
        store = Store.open(f"sqlite:///{Path(tmp) / 'tether.db'}")
        plan = [("httpx", KB, int(500 * scale), False), ("requests", KB, int(500 * scale), False),
                ("httpx", KB, int(500 * scale), True), ("httpx", MB, int(40 * scale), False)]
        results = [measure(store, url, client=c, size=s, n=n, rounds=5, repeated=r)
                   for c, s, n, r in plan]
        store.close()
    httpd.shutdown()
    print(f"{'client':<16}{'body':>6}{'requests':>9}{'off ms':>8}{'on ms':>8}"
          f"{'added':>8}{'+written':>9}{'+cpu':>7}{'off MB/s':>9}{'on MB/s':>8}{'on/off':>7}")
    for r in results:
        label = "1 KB" if r["size"] == KB else "1 MB"
        print(f"{r['client']:<16}{label:>6}{r['n']:>9}{r['off_ms']:>8.3f}{r['on_ms']:>8.3f}"
              f"{r['added_ms']:>8.3f}{r['added_written_ms']:>9.3f}{r['added_cpu_ms']:>7.3f}"
              f"{r['off_mbps']:>9.1f}{r['on_mbps']:>8.1f}{r['ratio']:>7.2f}")
    print("(ms per request; added: while the run makes its calls; +written: including "
          "waiting at the run's end until every exchange is written; +cpu: process CPU; "
          "on MB/s and on/off include the writes)")
    kb = [r for r in results if r["size"] == KB and "same" not in r["client"]]
    mb = [r for r in results if r["size"] == MB]
    ok_kb = all(r["added_written_ms"] < 1.0 for r in kb)
    ok_mb = all(r["ratio"] >= 0.8 for r in mb)
    load = os.getloadavg()[0]
    print(f"\nload average {load:.1f} on {os.cpu_count()} CPUs (numbers are noisy above ~1)")
    print(f"1 KB: under 1 ms added per request: {'yes' if ok_kb else 'NO'}; "
          f"1 MB: throughput within 20 %: {'yes' if ok_mb else 'NO'}")
    sys.exit(0 if ok_kb and ok_mb else 1)


if __name__ == "__main__":
    main()
