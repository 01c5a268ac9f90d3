"""Executing runs by id (engine providers): the group committer's claims and records."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import text

from tether.errors import StoreError
from tether.runtime.single import GroupCommit, Recorded, _Lane
from tether.store import Claim, Completion, Edge, Store
from tether.store.engine import BEGIN_PENDING
from tether.store.verify import verify


def batch(committer: GroupCommit, claims: list[Any], done: list[Any]) -> None:
    """Commit these claims and records as one batch, on a lane of the test's own."""
    lane = _Lane()
    try:
        committer._commit(claims, done, lane)
    finally:
        GroupCommit._drop(lane)


def succeeded(claim: Claim, *, output: Any = None, finished_at: float | None = None) -> Completion:
    """The claimed run succeeded on w1, triggering ``sanctions`` for the same key."""
    return Completion(
        run_id=claim.run_id, task_id=claim.task_id, worker="w1", attempt=1, succeeded=True,
        finished_at=claim.lease_expires_at - 29 if finished_at is None else finished_at,
        output=output,
        edges=(Edge(name="kyc.done", agent="sanctions", key=claim.key,
                    requires=("kyc.done",)),),
    )


def test_a_run_asked_for_twice_in_one_batch_is_claimed_once(store: Store) -> None:
    run_id = store.submit("kyc", "case-1").run_id
    assert run_id is not None
    committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=False)
    try:
        first: Future[Claim | None] = Future()
        second: Future[Claim | None] = Future()
        # Two deliveries of the same message, in the same transaction.
        batch(committer, [(run_id, first), (run_id, second)], [])
        results = [first.result(), second.result()]
    finally:
        committer.close()

    claimed = [c for c in results if c is not None]
    assert len(claimed) == 1 and claimed[0].run_id == run_id
    assert store.get_run(run_id).worker == "w1"


def test_claims_and_records_in_one_batch_commit_together(store: Store) -> None:
    # The engine providers' group commit: a run delivered (claimed by id) and a run
    # finished (recorded, its trigger followed) in one transaction. On PostgreSQL the
    # claim goes in the round trip that ends the finished run, and the COMMIT in the one
    # that appends to the ledger; both must still happen, and be visible to others.
    first = store.submit("kyc", "case-1").run_id
    second = store.submit("kyc", "case-2").run_id
    assert first is not None and second is not None
    committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=True,
                            agents=frozenset({"kyc", "sanctions"}))
    try:
        claim = committer.claim(first)
        assert claim is not None
        done = succeeded(claim, output={"ok": True})
        claimed: Future[Claim | None] = Future()
        recorded: Future[Recorded] = Future()
        before = committer.transactions
        batch(committer, [(second, claimed)], [(done, True, recorded)])
        assert committer.transactions == before + 1
        result = recorded.result()
        second_claim = claimed.result()
    finally:
        committer.close()

    assert result.recorded and result.follow is not None
    assert second_claim is not None and second_claim.run_id == second
    assert second_claim.agent == "kyc" and second_claim.key == "case-2"
    # Seen through another connection: the transaction committed.
    with Store.open(store.url) as other:
        assert other.get_run(first).status == "succeeded"
        assert other.get_run(second).status == "running"
        assert other.get_run(second).worker == "w1"
        followed = other.get_run(result.follow.run_id)
        assert followed.status == "running" and followed.worker == "w1"
        assert verify(other.engine).ok


def test_a_batch_whose_records_are_all_discarded_still_commits_its_claims(
    store: Store,
) -> None:
    # No ledger row to send the COMMIT with: the transaction is committed the usual way.
    first = store.submit("kyc", "case-1").run_id
    second = store.submit("kyc", "case-2").run_id
    assert first is not None and second is not None
    committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=False)
    try:
        claim = committer.claim(first)
        assert claim is not None
        stale = Completion(run_id=first, task_id=claim.task_id, worker="someone-else",
                           attempt=1, succeeded=True, finished_at=claim.lease_expires_at - 29)
        claimed: Future[Claim | None] = Future()
        recorded: Future[Recorded] = Future()
        batch(committer, [(second, claimed)], [(stale, False, recorded)])
        assert not recorded.result().recorded
        assert claimed.result() is not None
    finally:
        committer.close()
    with Store.open(store.url) as other:
        assert other.get_run(second).status == "running"
        assert other.get_run(first).status == "running"  # still w1's


def test_a_record_whose_last_statement_fails_leaves_nothing_behind(pg_url: str) -> None:
    # The committer's PostgreSQL connection is in autocommit mode and sends BEGIN with its
    # first statements and COMMIT with its last. If the BEGIN went missing, every statement
    # would commit on its own: here the run would end and its trigger's task appear
    # although the ledger refused the record.
    store = Store.open(pg_url)
    try:
        run_id = store.submit("kyc", "case-1").run_id
        assert run_id is not None
        with store.engine.begin() as conn:
            conn.execute(text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'the ledger refuses'; END $$"
            ))
            conn.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON ledger "
                              "FOR EACH ROW EXECUTE FUNCTION refuse()"))
        committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=True,
                                agents=frozenset({"kyc", "sanctions"}))
        try:
            claim = committer.claim(run_id)
            assert claim is not None
            done = succeeded(claim)
            with pytest.raises(StoreError, match="the ledger refuses"):
                committer.complete(done, follow=True)
            # The committer goes on: its next transaction begins afresh.
            other = store.submit("kyc", "case-2").run_id
            assert other is not None and committer.claim(other) is not None
        finally:
            committer.close()
        run = store.get_run(run_id)
        assert run.status == "running" and run.worker == "w1"
        assert store.find_task("sanctions", "case-1") is None
    finally:
        store.close()


def test_a_statement_outside_the_pipelines_still_runs_in_the_transaction(
    pg_url: str,
) -> None:
    # A write transaction whose BEGIN is still to be sent (BEGIN_PENDING) and whose first
    # statement is an ordinary SQLAlchemy one: the engine sends BEGIN before it, so a
    # rollback undoes it.
    store = Store.open(pg_url)
    try:
        with store.group_engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            with pytest.raises(RuntimeError), conn.begin():
                conn.info[BEGIN_PENDING] = True
                conn.execute(text("INSERT INTO tasks (agent, key, created_at) "
                                  "VALUES ('kyc', 'case-9', 0)"))
                assert BEGIN_PENDING not in conn.info
                raise RuntimeError("roll back")
        assert store.find_task("kyc", "case-9") is None
    finally:
        store.close()


def test_a_second_lane_commits_while_the_first_waits_once_two_requests_wait(
    pg_url: str
) -> None:
    # Two committer threads on PostgreSQL: a claim that waits on a row lock does not hold
    # up other runs' claims, which the second lane commits meanwhile; but not one request
    # alone, which waits to join the next batch (SECOND_LANE_MIN).
    store = Store.open(pg_url)
    try:
        blocked, first, second = (store.submit("kyc", f"case-{n}").run_id for n in (1, 2, 3))
        assert blocked is not None and first is not None and second is not None
        committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=False,
                                lanes=2)
        with ThreadPoolExecutor(3) as pool:
            with store.engine.connect() as locker, locker.begin():
                locker.execute(text("SELECT id FROM runs WHERE id = :id FOR UPDATE"),
                               {"id": blocked})
                waiting = pool.submit(committer.claim, blocked)
                time.sleep(0.2)  # the first lane is now waiting on the lock
                assert not waiting.done()
                alone = pool.submit(committer.claim, first)
                time.sleep(0.2)
                assert not alone.done()  # one request: the second lane leaves it
                other = pool.submit(committer.claim, second).result(timeout=10)
                assert other is not None and other.run_id == second
                claim = alone.result(timeout=10)  # in the same transaction
                assert claim is not None and claim.run_id == first
                assert committer.transactions == 1 and not waiting.done()
            claim = waiting.result(timeout=10)  # the lock released
        assert claim is not None and claim.run_id == blocked
        assert committer.transactions == 2
        committer.close()
        assert not any(t.is_alive() for t in committer._threads)
    finally:
        store.close()


def _claim_while_working(committer: GroupCommit, run_id: int, *, after: float = 0.0,
                         stay: float = 0.0, start: threading.Barrier | None = None,
                         ) -> tuple[Claim | None, float]:
    """Inside ``working()`` (once every thread of ``start`` is), wait ``after`` seconds,
    claim ``run_id``, stay ``stay`` more; returns the claim and the seconds it took."""
    with committer.working():
        if start is not None:
            start.wait(timeout=10)
        time.sleep(after)
        began = time.monotonic()
        claim = committer.claim(run_id)
        took = time.monotonic() - began
        time.sleep(stay)
    return claim, took


def _quietly_working(committer: GroupCommit, seconds: float, start: threading.Barrier
                     ) -> None:
    with committer.working():
        start.wait(timeout=10)
        time.sleep(seconds)


def test_a_lane_waits_for_another_working_threads_request_and_commits_both_at_once(
    store: Store,
) -> None:
    # Two threads working (LINGER): the first one's claim waits for the second one's,
    # which comes 0.3 s later, and the two go in one transaction, as soon as the second
    # arrives (not when the wait's limit runs out).
    first, second = (store.submit("kyc", f"case-{n}").run_id for n in (1, 2))
    assert first is not None and second is not None
    committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=False,
                            linger=20.0)
    try:
        with ThreadPoolExecutor(2) as pool:
            both = threading.Barrier(2)
            early = pool.submit(_claim_while_working, committer, first, start=both)
            late = pool.submit(_claim_while_working, committer, second, after=0.3, start=both)
            (claim_1, took_1), (claim_2, _) = early.result(timeout=15), late.result(timeout=15)
        assert claim_1 is not None and claim_1.run_id == first
        assert claim_2 is not None and claim_2.run_id == second
        assert committer.transactions == 1
        assert 0.25 < took_1 < 10
    finally:
        committer.close()


def test_a_lane_waits_for_no_one_when_no_other_thread_is_working(store: Store) -> None:
    # A lone working thread (a chain alone in its process), and a caller outside
    # working(): each request goes at once, whatever the wait's limit.
    first, second = (store.submit("kyc", f"case-{n}").run_id for n in (1, 2))
    assert first is not None and second is not None
    committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=False,
                            linger=20.0)
    try:
        claim, took = _claim_while_working(committer, first)
        assert claim is not None and took < 5
        began = time.monotonic()
        assert committer.claim(second) is not None
        assert time.monotonic() - began < 5
        assert committer.transactions == 2
    finally:
        committer.close()


def test_a_working_thread_that_leaves_without_asking_releases_the_waiting_lane(
    store: Store,
) -> None:
    # The second thread works 0.3 s, then leaves without a request (its chain ended): the
    # first one's claim, waiting for it, goes then.
    run_id = store.submit("kyc", "case-1").run_id
    assert run_id is not None
    committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=False,
                            linger=20.0)
    try:
        with ThreadPoolExecutor(2) as pool:
            both = threading.Barrier(2)
            leaving = pool.submit(_quietly_working, committer, 0.3, both)
            claim, took = _claim_while_working(committer, run_id, start=both)
            leaving.result(timeout=5)
        assert claim is not None and 0.2 < took < 10
    finally:
        committer.close()


def test_a_transaction_that_leaves_nothing_asked_for_wakes_no_other_lane(
    store: Store,
) -> None:
    # Requests one after another, each committed before the next is asked for: when a
    # transaction ends nothing waits, so waking the other lanes would only cost a thread
    # switch each (the lanes still wake for a request: the claims are all answered).
    ids = [store.submit("kyc", f"case-{n}").run_id for n in range(5)]
    committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=False,
                            lanes=2)
    wakes: list[int] = []
    notify_all = committer._cond.notify_all

    def counted() -> None:
        wakes.append(1)
        notify_all()

    committer._cond.notify_all = counted  # type: ignore[method-assign]
    try:
        for run_id in ids:
            assert run_id is not None
            claim = committer.claim(run_id)
            assert claim is not None and claim.run_id == run_id
        with committer.working():  # a thread that worked and asked nothing: no wake-up
            pass
        assert committer.transactions == len(ids)
        assert wakes == []
    finally:
        committer.close()


def test_closing_stops_every_lane_at_once(store: Store) -> None:
    committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=False,
                            lanes=3)
    run_id = store.submit("kyc", "case-1").run_id
    assert run_id is not None and committer.claim(run_id) is not None
    began = time.monotonic()
    committer.close()
    assert time.monotonic() - began < 5
    assert not any(t.is_alive() for t in committer._threads)
    with pytest.raises(StoreError, match="stopping"):
        committer.claim(run_id)


def test_the_committers_statements_are_planned_once_per_connection(pg_url: str) -> None:
    # Its sessions use the generic plan of each prepared statement (psycopg prepares a
    # statement on its sixth execution), never a plan made for one execution; with
    # sequential scans off those plans use the indexes. Read from the lane's own session;
    # the store's other sessions still plan every execution.
    store = Store.open(pg_url)
    committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=True,
                            agents=frozenset({"kyc", "sanctions"}))
    lane = _Lane()
    try:
        for n in range(12):
            run_id = store.submit("kyc", f"case-{n}").run_id
            claimed: Future[Claim | None] = Future()
            committer._commit([(run_id, claimed)], [], lane)
            claim = claimed.result()
            assert claim is not None
            done = succeeded(claim, output={"n": n}, finished_at=time.time())
            recorded: Future[Recorded] = Future()
            committer._commit([], [(done, True, recorded)], lane)
            assert recorded.result().recorded
        assert lane.conn is not None
        with lane.conn.begin():  # as the committer begins its transactions
            lane.conn.info[BEGIN_PENDING] = True
            generic, custom, *settings = lane.conn.execute(text(
                "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0), "
                "current_setting('plan_cache_mode'), current_setting('enable_seqscan') "
                "FROM pg_prepared_statements"
            )).one()
        with store.engine.connect() as other:
            elsewhere = other.execute(text(
                "SELECT current_setting('plan_cache_mode'), current_setting('enable_seqscan')"
            )).one()
    finally:
        GroupCommit._drop(lane)
        committer.close()
        store.close()

    assert tuple(elsewhere) == ("force_custom_plan", "on")
    assert custom == 0
    assert generic >= 6 * 5  # five statements or more, each run at least 6 times as prepared
    assert settings == ["force_generic_plan", "off"]
