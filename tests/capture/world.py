"""A local HTTP API for capture tests: its answers can be changed while it runs.

``World.answers[path] = (status, headers, body)`` sets what ``GET/POST path`` returns.
Built-in paths: ``/echo`` (the request's headers, query and body as JSON), ``/stream``
(chunks with pauses between them), ``/gzip`` (a gzip-encoded JSON body), ``/bytes/<n>``,
``/v1/chat/completions`` (an OpenAI-shaped answer).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

STREAM_CHUNKS = 4
STREAM_PAUSE = 0.25


class World:
    """The mutable answers of the local API, and the requests it received."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits: list[str] = []
        self.url = ""

    def set_json(self, path: str, doc: Any, status: int = 200, **headers: str) -> None:
        self.answers[path] = (
            status, {"Content-Type": "application/json", **headers}, json.dumps(doc).encode()
        )


def _handler(world: World) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self) -> None:
            data = self._body()
            parts = urlsplit(self.path)
            path = parts.path
            world.hits.append(f"{self.command} {self.path}")
            if path in world.answers:
                self._send(*world.answers[path])
            elif path == "/echo":
                doc = {
                    "headers": dict(self.headers.items()),
                    "query": dict(parse_qsl(parts.query)),
                    "body": data.decode(errors="replace"),
                }
                self._send(200, {"Content-Type": "application/json",
                                 "Set-Cookie": "session=cookie-secret-777; Path=/"},
                           json.dumps(doc).encode())
            elif path == "/stream":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(STREAM_CHUNKS):
                    chunk = f"chunk {i}\n".encode()
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                    time.sleep(STREAM_PAUSE)
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/gzip":
                body = gzip.compress(json.dumps({"zipped": True}).encode())
                self._send(200, {"Content-Type": "application/json",
                                 "Content-Encoding": "gzip"}, body)
            elif path.startswith("/bytes/"):
                n = int(path.rsplit("/", 1)[1])
                self._send(200, {"Content-Type": "application/octet-stream"}, b"x" * n)
            elif path == "/v1/chat/completions":
                req = json.loads(data)
                doc = {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
                    "model": req["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "approve"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                }
                self._send(200, {"Content-Type": "application/json"}, json.dumps(doc).encode())
            else:
                self._send(404, {"Content-Type": "text/plain"}, b"not found")

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that hangs up mid-stream (on purpose, in a test) is not news


@contextmanager
def serve() -> Iterator[World]:
    """A running local API on a free port; ``world.url`` is its base URL."""
    world = World()
    httpd = _Server(("127.0.0.1", 0), _handler(world))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    world.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield world
    finally:
        httpd.shutdown()
        httpd.server_close()
