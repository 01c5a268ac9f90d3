"""The provider x store combinations every conformance test runs on.

local+SQLite, local+PostgreSQL, Celery+PostgreSQL (Redis broker) and Temporal+PostgreSQL
(a dev server started for the session). Each backend drains work in-process through
:func:`tether.providers.get_provider` and gives the settings for `tether worker`
subprocesses, so the same scenarios run unchanged on every engine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.conftest import assert_edges_recorded_once
from tests.process.helpers import env_for
from tests.services import REDIS_URL, require, temporal_dev_server
from tether.providers import get_provider

BACKENDS = ["local-sqlite", "local-postgresql", "celery-postgresql", "temporal-postgresql"]


@dataclass
class Backend:
    """One provider x store combination, for one test's project folder."""

    name: str
    project_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a `tether` subprocess on this backend."""
        values = {f"TETHER_{k.upper()}": str(v) for k, v in self.settings.items()}
        return env_for(self.project_dir, **{**values, **extra})

    def project(self) -> tether.Project:
        return tether.Project.load(self.project_dir, **self.settings)

    def drain(self, *, timeout: float = 90, **overrides: Any) -> tether.WorkerStats:
        """Run the provider in this process until nothing is queued or running."""
        with tether.Project.load(self.project_dir, **{**self.settings, **overrides}) as p:
            provider = get_provider(p)
            result: dict[str, Any] = {}

            def work() -> None:
                try:
                    result["stats"] = provider.run(until_idle=True)
                except BaseException as exc:  # surfaced below, in the test's thread
                    result["error"] = exc

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            thread.join(timeout)
            if thread.is_alive():
                provider.abort()
                thread.join(10)
                pytest.fail(f"{self.name}: the provider did not drain within {timeout} s")
            if "error" in result:
                raise result["error"]
            stats: tether.WorkerStats = result["stats"]
            return stats

    def deliver(self, runs: list[tuple[int, str]]) -> None:
        """Hand runs to the engine again (a duplicate delivery)."""
        with tether.Project.load(self.project_dir, **self.settings) as p:
            get_provider(p).deliver(runs)


def assert_edges_exactly_once(b: Backend) -> None:
    """No trigger edge (upstream run, trigger, downstream task) is recorded twice."""
    with b.project() as p:
        assert_edges_recorded_once(p.store)


@pytest.fixture(scope="session")
def temporal_address() -> Iterator[str]:
    with temporal_dev_server() as address:
        yield address


def delete_queue(broker_url: str, name: str) -> None:
    """Delete Celery queue ``name`` (and its exchange and bindings) with any messages left.

    Declared first, as Celery declares it: kombu's Redis transport only deletes what the
    channel knows it bound. Only this session's queues are named here, never others'.
    """
    from kombu import Connection, Exchange, Queue

    with Connection(broker_url) as conn:
        exchange = Exchange(name)
        bound = Queue(name, exchange, routing_key=name)(conn.default_channel)
        bound.declare()
        bound.delete()
        with contextlib.suppress(Exception):  # Redis keeps no exchange of its own
            exchange(conn.default_channel).delete()
    if broker_url.startswith("redis://"):
        _forget_unacked(broker_url, name)


def _forget_unacked(broker_url: str, name: str) -> None:
    """Drop the messages a SIGKILLed worker held for queue ``name`` from kombu's Redis
    ``unacked`` hash; kombu would otherwise restore them later and so re-create the queue
    this teardown deleted. Entries of other queues are left alone."""
    import json

    import redis

    client = redis.Redis.from_url(broker_url)
    for tag, raw in client.hgetall("unacked").items():
        with contextlib.suppress(ValueError, IndexError, TypeError):
            if json.loads(raw)[-1] == name:  # [message, exchange, routing key]
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    client.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    provider, store = request.param.split("-")
    settings: dict[str, Any] = {
        "provider": provider,
        "poll_interval": 0.02,
        "lease_seconds": 5.0,
        "concurrency": 4,
        # This session's pid in the name: sessions never share (or delete) each other's.
        "task_queue": f"tether-conf-{os.getpid()}-{secrets.token_hex(4)}",
    }
    if store == "postgresql":
        settings["database_url"] = request.getfixturevalue("pg_url")
    else:
        settings["database_url"] = f"sqlite:///{tmp_path / '.tether' / 'tether.db'}"
    if provider == "celery":
        require("redis", 6379)
        settings["broker_url"] = REDIS_URL
    if provider == "temporal":
        settings["temporal_address"] = request.getfixturevalue("temporal_address")
    yield Backend(request.param, tmp_path, settings)
    if provider == "celery":
        # Tidy the broker: the queue, its bindings and any message a killed worker left.
        delete_queue(settings["broker_url"], settings["task_queue"])
