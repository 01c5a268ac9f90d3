"""Failures of real HTTP calls (httpx and requests) classified through a real worker.

A local HTTP server answers ``/status/<code>``; a closed port gives "connection refused".
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import requests

import tether
from tether import Context, Project, RetryPolicy, WorkerStats
from tether.retry import classify
from tether.store import FailureClass, RunStatus

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

TWO_TRIES = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = int(self.path.rsplit("/", 1)[-1])
        body = b'{"ok": true}' if code < 400 else b"no"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        return


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of a local HTTP server: GET /status/503 answers 503, and so on."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def refused() -> str:
    """A URL whose port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/status/200"


def _get_httpx(url: str) -> object:
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    return response.json()


def _get_requests(url: str) -> object:
    response = requests.get(url, timeout=5)
    response.raise_for_status()
    return response.json()


CLIENTS = {"httpx": _get_httpx, "requests": _get_requests}


def _run_call(
    make_project: MakeProject, run_idle: RunIdle, client: str, url: str
) -> tuple[list[int], list[tether.Run]]:
    get = CLIENTS[client]
    attempts: list[int] = []

    @tether.agent(retry=TWO_TRIES)
    def fetch(ctx: Context) -> object:
        attempts.append(ctx.attempt)
        with ctx.step("GET", input={"url": url}) as s:
            s.output = get(url)
        return s.output

    project = make_project([fetch])
    sub = project.submit("fetch", "case-1")
    run_idle(project)
    return attempts, project.store.runs_of(sub.task_id)


@pytest.mark.parametrize("client", ["httpx", "requests"])
@pytest.mark.parametrize("code", [503, 500, 429])
def test_a_5xx_or_429_answer_is_retryable(
    make_project: MakeProject, run_idle: RunIdle, server: str, client: str, code: int
) -> None:
    attempts, history = _run_call(make_project, run_idle, client, f"{server}/status/{code}")

    assert attempts == [1, 2]
    assert [r.failure_class for r in history] == [FailureClass.RETRYABLE] * 2
    reason = history[0].failure_reason
    assert reason is not None
    assert ("HTTPStatusError" if client == "httpx" else "HTTPError") in reason
    assert str(code) in reason
    assert history[1].failure_reason is not None
    assert history[1].failure_reason.endswith("(gave up after 2 attempts)")
    assert [s.status for s in history[0].steps] == ["failed"]


@pytest.mark.parametrize("client", ["httpx", "requests"])
@pytest.mark.parametrize("code", [404, 400, 422])
def test_a_4xx_answer_is_terminal(
    make_project: MakeProject, run_idle: RunIdle, server: str, client: str, code: int
) -> None:
    attempts, history = _run_call(make_project, run_idle, client, f"{server}/status/{code}")

    assert attempts == [1]
    [run] = history
    assert run.failure_class == FailureClass.TERMINAL
    assert run.failure_reason is not None and str(code) in run.failure_reason


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_connection_refused_is_retryable(
    make_project: MakeProject, run_idle: RunIdle, refused: str, client: str
) -> None:
    attempts, history = _run_call(make_project, run_idle, client, refused)

    assert attempts == [1, 2]
    assert [r.failure_class for r in history] == [FailureClass.RETRYABLE] * 2
    reason = history[0].failure_reason
    assert reason is not None
    assert ("ConnectError" if client == "httpx" else "ConnectionError") in reason


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_a_200_answer_is_the_output(
    make_project: MakeProject, run_idle: RunIdle, server: str, client: str
) -> None:
    attempts, history = _run_call(make_project, run_idle, client, f"{server}/status/200")

    assert attempts == [1]
    [run] = history
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, {"ok": True})
    assert [s.output for s in run.steps] == [{"ok": True}]


def test_timeouts_are_retryable() -> None:
    """A read that times out (the server never answers) is the world failing, not the agent."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    silent = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    try:
        with pytest.raises(httpx.TimeoutException) as httpx_info:
            httpx.get(silent, timeout=0.05)
        with pytest.raises(requests.Timeout) as requests_info:
            requests.get(silent, timeout=0.05)
    finally:
        listener.close()

    assert classify(httpx_info.value).cls == FailureClass.RETRYABLE
    assert classify(requests_info.value).cls == FailureClass.RETRYABLE
    assert classify(TimeoutError("slow")).cls == FailureClass.RETRYABLE
    assert classify(ConnectionResetError("reset")).cls == FailureClass.RETRYABLE
