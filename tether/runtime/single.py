"""Executing one run by id: what a Celery task or a Temporal activity does with a run id.

The store stays the source of truth on every provider: the run is claimed by id with a
lease (so a duplicate delivery executes nothing), the lease is renewed while the agent
runs, and the outcome, steps, trigger edges and retry are recorded in one transaction —
the same :class:`tether.store.Completion` path the local worker uses.

Like the local worker's pump, one process group-commits: every claim and completion its
threads ask for goes through a committer thread (:class:`GroupCommit`; two on PostgreSQL,
each with a transaction in flight), which takes all that arrived while its previous
transaction was in flight into the next one, waiting up to :data:`LINGER` (3 ms) for
requests the process's other working threads are about to make. Under load that is one
synced commit for several runs' claims and records; alone, a request is committed at
once. A completion's downstream runs are marked dispatched in the same
transaction and handed to the engine right after the commit (``publish``), so a chain's
next run does not wait for the outbox, which stays the safety net. With
:meth:`RunOne.follow` (the Celery provider) the first of them, when its task is new, is
instead claimed for this worker in that transaction and executed next on the same thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from tether.errors import StoreError
from tether.graph.registry import Graph
from tether.runtime.context import StepRecorder
from tether.runtime.execute import Executor
from tether.runtime.worker import WorkerStats, default_worker_id
from tether.store import Completion, Store
from tether.store.base import _is_conflict
from tether.store.engine import BEGIN_PENDING, WRITE
from tether.store.writes import Claim, ClaimIds, Follow

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[tuple[int, str]]], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What executing a run by id did, in plain data an engine can carry."""

    run_id: int
    executed: bool
    """False when the run was not claimable (a duplicate, not yet due, or finished)."""
    succeeded: bool = False
    recorded: bool = False
    """False when the lease was lost mid-run and the completion was discarded."""
    failure_class: str | None = None
    failure_reason: str | None = None
    retry_at: float | None = None
    """When the retry the store queued becomes due (None: no retry queued)."""
    dispatched: tuple[tuple[int, str], ...] = ()
    """``(run id, agent)`` of the downstream runs handed to the engine with this record."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the committer did with one completion."""

    recorded: bool
    """False when the lease was lost and the completion was discarded."""
    dispatched: list[tuple[int, str]]
    """Downstream runs marked dispatched, for the engine to be handed right away."""
    follow: Claim | None = None
    """A downstream run claimed for this worker, to execute next on the same thread."""


_Done = tuple[Completion, bool, "Future[Recorded]"]


def count(stats: WorkerStats, outcome: Outcome) -> None:
    """Add one executed run's outcome to a provider's counts (not thread-safe: hold a lock)."""
    stats.claimed += 1
    if not outcome.recorded:
        stats.discarded += 1
    elif outcome.succeeded:
        stats.succeeded += 1
    else:
        stats.failed += 1
        if outcome.retry_at is not None:
            stats.retries_queued += 1


PG_LANES = 2
"""Committer threads per process on PostgreSQL. A transaction spends most of its time
waiting for the database; a second one in flight meanwhile lifted a 4-thread Celery
worker's throughput by about 20% (620 against 505 runs/s; docs/benchmarks.md). SQLite
takes one writer at a time, so it keeps one."""

SECOND_LANE_MIN = 2
"""Requests a lane takes into a transaction while another lane has one in flight. A lone
request waits for that transaction to end (a millisecond or two) and joins the next
batch: a second transaction for it alone cost more CPU per run than the wait saved.
Measured, Celery workers of 4 threads: 324 -> 346 runs/s at one process, 362 -> 394 at
four, CPU per run 4.53 -> 4.24 and 5.17 -> 4.68 ms (three interleaved trials each,
docs/benchmarks.md); three requests slowed one process again."""


LINGER = 0.003
"""Seconds at most a lane waits, with a request in hand, for the next requests of this
process's other working threads (see :meth:`GroupCommit.working`): a run executing, or
one whose record or claim is in the other lane's transaction and that will ask for its
next hop. A request no other thread may join goes at once (a lone chain waits for
nothing). Under load the wait gathers half as many requests again per transaction:
measured on 2 cores (Celery, no-op chains, docs/benchmarks.md), record transactions per
run 0.72 -> 0.45-0.47 with 4 threads per process (one and four processes) and 0.50 ->
0.36 with 16, CPU per run 8-24% lower with 4 threads (within the noise with 16); 3 ms
did as well as 10 (better at one process), and a chain's latency did not change."""

LINGER_BATCH = 4
"""Requests in hand at which a lane stops waiting for more (:data:`LINGER`)."""


class _Lane:
    """One committer thread's connection, held for the thread's whole life (no pool
    checkout, no ping per transaction)."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: Connection | None = None


class GroupCommit:
    """The committer threads for a process's claims and completions (see the module doc).

    Each of its ``lanes`` threads takes everything asked for while it was busy into its
    next transaction, on its own connection (beside another lane's transaction only when
    :data:`SECOND_LANE_MIN` requests wait), and retries a transaction PostgreSQL aborted
    as a deadlock. A lane with fewer than :data:`LINGER_BATCH` requests in hand waits up
    to ``linger`` seconds for those of the process's other :meth:`working` threads. If a
    batch fails otherwise, each request is tried again alone, so one bad completion (an
    output the database refuses) fails only its own run.
    """

    def __init__(self, store: Store, *, worker: str, lease_seconds: float,
                 inline_dispatch: bool, agents: frozenset[str] = frozenset(),
                 lanes: int = 1, linger: float = LINGER) -> None:
        self.store = store
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.agents = agents
        """The agents whose runs a followed completion may claim (this worker's graph)."""
        self.inline_dispatch = inline_dispatch
        self.linger = linger
        """Seconds at most a lane waits for other working threads' requests (:data:`LINGER`)."""
        self.transactions = 0
        self._cond = threading.Condition()
        self._claims: list[tuple[int, Future[Claim | None]]] = []
        self._done: list[_Done] = []
        self._closed = False
        self._busy = 0  # lanes with a transaction in flight
        self._working = 0  # threads that will ask for more (see working())
        self._threads = [
            threading.Thread(target=self._loop, args=(_Lane(),), name=f"tether-commit-{n}",
                             daemon=True)
            for n in range(max(1, lanes))
        ]
        for thread in self._threads:
            thread.start()

    def claim(self, run_id: int) -> Claim | None:
        """Claim run ``run_id`` for this worker (None: not claimable)."""
        fut: Future[Claim | None] = Future()
        with self._cond:
            self._check_open()
            self._claims.append((run_id, fut))
            self._cond.notify()
        return fut.result()

    @contextmanager
    def working(self) -> Iterator[None]:
        """Count the calling thread as one that will ask for claims or records while the
        block runs (a run or chain it executes), so a lane may wait a little for its
        next request (see :data:`LINGER`)."""
        with self._cond:
            self._working += 1
        try:
            yield
        finally:
            with self._cond:
                self._working -= 1
                if self._pending():  # nothing more comes from it: a lane lingering goes
                    self._cond.notify_all()

    def complete(self, completion: Completion, *, follow: bool = False) -> Recorded:
        """Record ``completion``; with ``follow``, also claim for this worker the first run
        its triggers queue for a new task (see :class:`~tether.store.writes.Follow`)."""
        fut: Future[Recorded] = Future()
        with self._cond:
            self._check_open()
            self._done.append((completion, follow, fut))
            self._cond.notify()
        return fut.result()

    def close(self) -> None:
        """Commit what was asked for, then stop the threads and release their connections."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    def _pending(self) -> int:
        return len(self._claims) + len(self._done)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the worker is stopping: no more claims or records")

    def _loop(self, lane: _Lane) -> None:
        while True:
            with self._cond:
                while not self._closed and (
                    self._pending() < (SECOND_LANE_MIN if self._busy else 1)
                ):
                    self._cond.wait()
                # Linger (LINGER): while other working threads may yet join this batch.
                deadline = time.monotonic() + self.linger
                while (
                    not self._closed
                    and 0 < self._pending() < LINGER_BATCH
                    and self._working > self._pending()
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(left)
                claims, self._claims = self._claims, []
                done, self._done = self._done, []
                if not claims and not done:
                    if self._closed:  # and drained
                        break
                    continue  # another lane took them while this one waited
                self._busy += 1
            try:
                self._commit(claims, done, lane)
            finally:
                with self._cond:
                    self._busy -= 1
                    # A lane waiting for a second request may go now. Only if one is asked
                    # for: waking the other lane for nothing cost a thread switch and a
                    # GIL hand-over per transaction.
                    if self._pending():
                        self._cond.notify_all()
        if lane.conn is not None:
            lane.conn.close()
            lane.conn = None

    def _commit(
        self,
        claims: list[tuple[int, Future[Claim | None]]],
        done: list[_Done],
        lane: _Lane,
    ) -> None:
        try:
            accepted, dispatched, claimed, follow = self._transact(
                lane, [c for c, _, _ in done], {c.run_id for c, f, _ in done if f},
                [r for r, _ in claims],
            )
        except BaseException as exc:
            if len(claims) + len(done) == 1:
                for _, cfut in claims:
                    cfut.set_exception(exc)
                for _, _, dfut in done:
                    dfut.set_exception(exc)
                return
            for item in claims:  # one at a time: only the culprit fails
                self._commit([item], [], lane)
            for one in done:
                self._commit([], [one], lane)
            return
        given: set[int] = set()
        for run_id, cfut in claims:
            # A run delivered twice can be asked for twice in one batch: only the first
            # request gets the claim; the other finds it taken, as it would a moment later.
            cfut.set_result(None if run_id in given else claimed.get(run_id))
            given.add(run_id)
        for c, _, dfut in done:
            dfut.set_result(Recorded(c.run_id in accepted, dispatched.get(c.run_id, []),
                                     follow.get(c.run_id)))

    def _transact(
        self, lane: _Lane, completions: list[Completion], wanted: set[int], run_ids: list[int]
    ) -> tuple[set[int], dict[int, list[tuple[int, str]]], dict[int, Claim], dict[int, Claim]]:
        store = self.store
        # PostgreSQL: the connection is in autocommit mode and each transaction sends its
        # own BEGIN in its first pipeline (engine.BEGIN_PENDING), its COMMIT in its last:
        # a record takes two round trips, a claim alone one.
        explicit = store.dialect == "postgresql"
        for attempt in range(1, 9):
            try:
                if lane.conn is None:
                    lane.conn = store.group_engine.connect()
                    lane.conn.execution_options(**{WRITE: True})
                    if explicit:
                        lane.conn.execution_options(isolation_level="AUTOCOMMIT")
                conn = lane.conn
                follow = Follow(self.worker, self.lease_seconds, self.agents, wanted)
                claims = ClaimIds(run_ids, self.worker, self.lease_seconds)
                with conn.begin(), _pending_begin(conn, explicit):
                    dispatched: dict[int, list[tuple[int, str]]] = {}
                    if completions:
                        # The claims go with the records (on PostgreSQL in the same round
                        # trip), and nothing follows, so the COMMIT may go with the last
                        # statement.
                        accepted = set(store._complete(
                            conn, completions, dispatched if self.inline_dispatch else None,
                            follow=follow, claims=claims if run_ids else None, last=True,
                        ))
                    else:
                        accepted = set()
                        claims.claimed = store._claim_ids(
                            conn, run_ids, worker=self.worker,
                            lease_seconds=self.lease_seconds, last=True,
                        )
                with self._cond:  # several lanes count
                    self.transactions += 1
                return accepted, dispatched, claims.claimed, follow.claims
            except (OperationalError, DBAPIError) as exc:
                lost = getattr(exc, "connection_invalidated", False)
                if lost or lane.conn is None or lane.conn.invalidated:
                    self._drop(lane)
                if attempt < 8 and (lost or _is_conflict(exc)):
                    time.sleep(0.001 * attempt)
                    continue
                raise StoreError(f"store write failed: {exc.orig}") from exc
            except BaseException:
                self._drop(lane)
                raise
        raise AssertionError("unreachable")

    @staticmethod
    def _drop(lane: _Lane) -> None:
        if lane.conn is not None:
            try:
                lane.conn.close()
            except Exception:  # already broken: nothing to release
                log.debug("closing a broken store connection failed", exc_info=True)
            lane.conn = None


@contextmanager
def _pending_begin(conn: Connection, explicit: bool) -> Iterator[None]:
    """Mark the transaction's BEGIN as still to be sent, for its first statement to send;
    unmarked on the way out, even when no statement ran."""
    if not explicit:
        yield
        return
    conn.info[BEGIN_PENDING] = True
    try:
        yield
    finally:
        conn.info.pop(BEGIN_PENDING, None)


class RunOne:
    """Executes single runs by id against one store and graph; thread-safe."""

    def __init__(
        self,
        store: Store,
        graph: Graph,
        *,
        lease_seconds: float = 30.0,
        worker_id: str | None = None,
        on_complete: Callable[[Completion], None] | None = None,
        publish: Publish | None = None,
    ) -> None:
        self.store = store
        self.graph = graph
        self.lease_seconds = lease_seconds
        self.worker_id = worker_id or default_worker_id()
        self.on_complete = on_complete
        """Called (on the executing thread) with every completion the store recorded."""
        self.publish = publish
        """Hands the runs a completion's triggers queued to the engine, right after the
        commit that recorded it. None: the outbox hands them over on its next pass."""
        self._executor = Executor(store, graph)
        self._commit: GroupCommit | None = None
        self._held: dict[int, StepRecorder] = {}
        self._lock = threading.Lock()
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def committer(self) -> GroupCommit:
        """The committer thread, started on first use."""
        with self._lock:
            if self._commit is None:
                self._commit = GroupCommit(
                    self.store, worker=self.worker_id, lease_seconds=self.lease_seconds,
                    inline_dispatch=self.publish is not None,
                    agents=frozenset(self.graph.agents),
                    lanes=PG_LANES if self.store.dialect == "postgresql" else 1,
                )
                # One heartbeat for every run this process holds, not a thread per run.
                self._beat = threading.Thread(
                    target=self._heartbeat, name="tether-beat", daemon=True
                )
                self._beat.start()
            return self._commit

    def __call__(self, run_id: int) -> Outcome:
        """Claim run ``run_id``, execute it, record it. Never raises for agent errors."""
        with self.committer.working():
            claim = self.committer.claim(run_id)
            if claim is None:
                return Outcome(run_id=run_id, executed=False)
            return self._execute(claim, follow=_never)[0]

    def follow(self, run_id: int, *, go_on: Callable[[], bool] = lambda: True
               ) -> Iterator[Outcome]:
        """Execute run ``run_id`` as :meth:`__call__` does, then, while ``go_on()``, the
        downstream run each completion claimed for this worker in its own transaction,
        yielding every outcome.

        A chain ``a -> b -> c`` then takes one engine message and one claim, not three:
        ``b`` is inserted already claimed by this worker when ``a`` is recorded (only a run
        of a task that transaction created; others are queued and handed over as usual).
        Once ``go_on()`` is false no further run is claimed this way, and the run already
        claimed is still executed and recorded.
        """
        with self.committer.working():
            claim = self.committer.claim(run_id)
            if claim is None:
                yield Outcome(run_id=run_id, executed=False)
                return
            while claim is not None:
                outcome, claim = self._execute(claim, follow=go_on)
                yield outcome

    def held(self) -> list[int]:
        """The runs this process is executing now (claimed, not yet recorded)."""
        with self._lock:
            return list(self._held)

    def _execute(
        self, claim: Claim, *, follow: Callable[[], bool]
    ) -> tuple[Outcome, Claim | None]:
        run_id = claim.run_id
        with self._lock:
            recorder = self._held.get(run_id)  # a followed run is held since its claim
            if recorder is None:
                recorder = self._held[run_id] = self._executor.recorder(claim)
        try:
            completion: Completion = self._executor.run(claim, recorder, worker=self.worker_id)
        finally:
            with self._lock:
                self._held.pop(run_id, None)
        # Asked when the run is recorded, not when it started: a worker told to stop
        # while the agent ran takes no next run.
        done = self.committer.complete(completion, follow=follow())
        if done.follow is not None:
            # Held from now on: the heartbeat renews its lease while it waits its turn.
            with self._lock:
                self._held[done.follow.run_id] = self._executor.recorder(done.follow)
        if done.dispatched and self.publish is not None:
            try:
                self.publish(done.dispatched)
            except Exception as exc:  # the outbox hands them over after redispatch_after
                log.warning("handing runs %s to the engine failed (%s); the outbox will "
                            "retry", [r for r, _ in done.dispatched], exc)
        if done.recorded and self.on_complete is not None:
            self.on_complete(completion)
        outcome = Outcome(
            run_id=run_id,
            executed=True,
            succeeded=completion.succeeded,
            recorded=done.recorded,
            failure_class=completion.failure_class,
            failure_reason=completion.failure_reason,
            retry_at=completion.retry_at,
            dispatched=tuple(done.dispatched),
        )
        return outcome, done.follow

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                self.store.renew(self.worker_id, held, lease_seconds=self.lease_seconds)
            except Exception:  # keep beating; the completion surfaces a broken store
                continue
            for recorder in held.values():
                try:
                    recorder.flush()
                except Exception:  # as above
                    continue

    def reap(self, *, followed: bool = False) -> list[int]:
        """Fail runs whose worker was lost (lease expired) and queue their retries
        (``followed``: see :meth:`tether.store.Store.reap`)."""
        return self.store.reap(
            self._executor.retry_at, agents=frozenset(self.graph.agents), followed=followed
        )

    def close(self) -> None:
        """Stop the committer and heartbeat threads and the shared event loop of
        coroutine agents, if one was started."""
        self._stop.set()
        with self._lock:
            commit, self._commit = self._commit, None
        if commit is not None:
            commit.close()
        self._executor.close()


def _never() -> bool:
    return False
