"""The provider interface: how queued runs get executed.

Every provider keeps the store as the source of truth. The local provider claims queued
runs itself (:class:`tether.runtime.Worker`). Engine providers (Celery, Temporal) run a
:class:`Dispatcher` — an outbox relay that hands due queued runs to the engine by id and
reaps runs whose worker was lost — and execute each delivered id with
:class:`tether.runtime.single.RunOne`, which claims it by id (so duplicates do nothing).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import Connection, func, select

from tether.runtime.single import RunOne
from tether.runtime.worker import WorkerStats
from tether.store import Completion
from tether.store.statements import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from tether.project import Project

Listener = Callable[[Completion], None]
Publish = Callable[[Sequence[tuple[int, str]]], None]
"""Hands ``(run id, agent)`` pairs to the engine."""


class Provider(ABC):
    """One way of executing a project's queued runs."""

    name: ClassVar[str]

    def __init__(self, project: Project) -> None:
        self.project = project
        self.settings = project.settings

    @abstractmethod
    def run(
        self,
        *,
        until_idle: bool = False,
        concurrency: int | None = None,
        on_complete: Listener | None = None,
    ) -> WorkerStats:
        """Execute runs until stopped, or with ``until_idle`` until the store holds no
        queued or running run of this project's agents."""

    @abstractmethod
    def stop(self) -> None:
        """Stop taking new runs; runs in flight finish."""

    def abort(self) -> None:
        """Stop now; runs in flight are left to their leases."""
        self.stop()

    def deliver(self, runs: Sequence[tuple[int, str]]) -> None:
        """Hand ``(run id, agent)`` pairs to the engine now, even if already handed over.

        Engine providers publish them (a duplicate is harmless: a run is claimed by id at
        most once); the local provider pulls runs from the store, so there is nothing to
        deliver. Tests use it to prove duplicate deliveries execute nothing twice.
        """
        return None  # the local provider's default: runs are pulled, never delivered

    def idle(self) -> bool:
        """True when no run of this project's agents is queued or running."""
        pending = self.project.store.pending(agents=frozenset(self.project.graph.agents))
        return pending.queued == 0 and pending.running == 0


class Dispatcher:
    """The outbox relay of engine providers: every ``poll`` seconds it reaps lost runs and
    hands due queued runs to the engine (``publish``). A run it handed over that is still
    queued after ``redispatch_after`` seconds (the message was lost) is handed over again.

    On PostgreSQL one dispatcher per ``outbox`` (a provider and its queue) acts at a time:
    the one holding a session advisory lock named after it. The others check every
    ``poll`` seconds (at least once a second) whether they may take over, which they can
    as soon as the holder's connection ends (its process stopped or died). Every process
    running its own outbox would wake on every submission and race for the same runs:
    work that grows with the processes and does nothing. On SQLite every dispatcher acts.
    """

    def __init__(
        self,
        runner: RunOne,
        publish: Publish,
        *,
        poll: float = 0.1,
        redispatch_after: float = 30.0,
        batch: int = 256,
        outbox: str = "",
    ) -> None:
        self.runner = runner
        self.publish = publish
        self.poll = poll
        self.redispatch_after = redispatch_after
        self.batch = batch
        self.dispatched = 0
        self.reaped = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._lock_key = _lock_key(outbox) if runner.store.dialect == "postgresql" else None
        self._lock_conn: Connection | None = None
        self._leading = self._lock_key is None
        self._next_check = 0.0

    @property
    def leading(self) -> bool:
        """True while this dispatcher is the one acting for its outbox."""
        return self._leading

    def _lead(self) -> bool:
        """Whether to act on this pass: hold (or take) the outbox's advisory lock. The
        holder checks its lock's connection, and the others try for the lock, at most
        once per ``poll`` (or second), not on every wake-up."""
        now = time.monotonic()
        if self._lock_key is None or now < self._next_check:
            return self._leading
        self._next_check = now + min(self.poll, 1.0)
        try:
            if self._lock_conn is None:
                self._lock_conn = self.runner.store.engine.connect()
            if self._leading:
                self._lock_conn.execute(select(1))  # the lock lives as long as this session
            else:
                self._leading = bool(self._lock_conn.execute(
                    select(func.pg_try_advisory_lock(self._lock_key))
                ).scalar())
            self._lock_conn.commit()  # a session lock outlives the transaction
        except Exception as exc:  # lost the connection, and with it any lock it held
            log.debug("outbox lock check failed: %s", exc)
            self._leading = False
            self._release_lock()
        return self._leading

    def _release_lock(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            try:
                conn.invalidate()  # ends the session: the lock goes with it
                conn.close()
            except Exception:  # already broken: nothing to release
                log.debug("closing the outbox lock connection failed", exc_info=True)

    def tick(self) -> int:
        """One pass: reap, then dispatch what is due. Returns the runs dispatched."""
        if not self._lead():
            return 0
        self.reaped += len(self.runner.reap())
        due = self.runner.store.dispatch_batch(
            limit=self.batch,
            redispatch_after=self.redispatch_after,
            agents=frozenset(self.runner.graph.agents),
        )
        if due:
            self.publish(due)
            self.dispatched += len(due)
        return len(due)

    def pause(self) -> float:
        """Seconds to wait after a pass that did not fill a batch, unless woken: the poll."""
        return self.poll

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.tick() >= self.batch
            except Exception:  # a broker or store hiccup: try again next pass
                busy = False
            if not busy:
                self._wake.wait(self.pause())
                self._wake.clear()

    def wake(self) -> None:
        """Tick now instead of at the end of the poll: a run just finished, so the runs
        it triggered are queued and due (one wake-up serves every completion until the
        tick, so a busy worker still dispatches in batches)."""
        self._wake.set()

    def start(self) -> None:
        """Run :meth:`tick` every ``poll`` seconds on a background thread (on PostgreSQL
        also as soon as a run is submitted or retried by an operator: see :meth:`_listen`)."""
        self._thread = threading.Thread(target=self._loop, name="tether-dispatch", daemon=True)
        self._thread.start()
        if self.runner.store.dialect == "postgresql":
            self._listener = threading.Thread(
                target=self._listen, name="tether-listen", daemon=True
            )
            self._listener.start()

    def _listen(self) -> None:
        """Wake the dispatcher when the store notifies that a run is due (PostgreSQL
        ``LISTEN``), so a submitted run is handed over within a millisecond or two rather
        than after up to ``poll`` seconds. The poll stays: it covers notifications missed
        while this connection was down, retries coming due, and SQLite.

        Only the acting dispatcher listens: PostgreSQL wakes every listening session, and
        its client thread, on every submission, for nothing in the others (measured with
        four worker processes: 0.14 against 0.04 ms of CPU per run for the listeners). One
        that takes over listens from its next check, at most a second later; its poll
        covers the gap."""
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(self.runner.store.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while not self._stop.is_set():
            if not self._leading:
                self._stop.wait(min(self.poll, 1.0))
                continue
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._wake.set()  # whatever was notified before this LISTEN
                    while self._leading and not self._stop.is_set():
                        # A second of notifications at a time, so that stop() and a lost
                        # lead are seen within a second: one generator (its lock and its
                        # set-up) for the second, not one per notification, which under a
                        # stream of submissions is one per chain.
                        for _ in conn.notifies(timeout=1.0):
                            self._wake.set()
            except Exception as exc:  # the poll carries on; listen again shortly
                log.debug("LISTEN %s failed: %s", NOTIFY_CHANNEL, exc)
                self._stop.wait(1.0)

    def stop(self) -> None:
        """Stop the background thread (and give up the outbox to another dispatcher)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.join(timeout=2)
        self._release_lock()
        self._leading = self._lock_key is None


def _lock_key(outbox: str) -> int:
    """The advisory lock id of an outbox: a stable signed 64-bit hash of its name."""
    digest = hashlib.blake2b(f"tether-outbox:{outbox}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def wait_until_idle(provider: Provider, *, stop: threading.Event, poll: float = 0.1) -> None:
    """Block until the provider's store is idle (twice in a row, a poll apart) or ``stop``."""
    quiet = 0
    while not stop.is_set():
        quiet = quiet + 1 if provider.idle() else 0
        if quiet >= 2:
            return
        time.sleep(poll)
