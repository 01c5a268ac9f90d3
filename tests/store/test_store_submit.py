"""Submitting work: tasks are idempotent by (agent, key); new input starts a new run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from tether import OutputError, Store, TaskStatus
from tether.store import Completion, RunStatus
from tether.store.statements import NOTIFY_CHANNEL

NO_INPUT = object()


def _finish(store: Store, worker: str = "w1") -> int:
    """Claim the one available run and record it as succeeded; returns its id."""
    [claim] = store.claim(worker, limit=1, lease_seconds=30)
    accepted = store.complete(
        [
            Completion(
                run_id=claim.run_id,
                task_id=claim.task_id,
                worker=worker,
                attempt=claim.attempt,
                succeeded=True,
                finished_at=claim.lease_expires_at - 29,
                output={"ok": True},
            )
        ]
    )
    assert accepted == [claim.run_id]
    return claim.run_id


def test_submit_creates_a_task_and_queues_one_run(store: Store) -> None:
    sub = store.submit("quote", "case-1", now=100.0)

    assert sub.created is True
    assert sub.run_id is not None
    [run] = store.runs_of(sub.task_id)
    assert run.id == sub.run_id
    assert (run.attempt, run.reason, run.status) == (1, "submitted", RunStatus.QUEUED)
    assert run.created_at == run.available_at == 100.0
    task = store.get_task(sub.task_id)
    assert (task.agent, task.key, task.status, task.runs) == ("quote", "case-1", "queued", 1)


def test_submitting_the_same_key_twice_gives_one_task_and_one_run(store: Store) -> None:
    first = store.submit("quote", "case-1")
    second = store.submit("quote", "case-1")

    assert second.task_id == first.task_id
    assert second.created is False
    assert second.run_id is None
    assert len(store.list_tasks()) == 1
    assert len(store.runs_of(first.task_id)) == 1


def test_same_key_for_another_agent_is_another_task(store: Store) -> None:
    a = store.submit("quote", "case-1")
    b = store.submit("kyc", "case-1")

    assert a.task_id != b.task_id
    assert b.created is True and b.run_id is not None


def test_resubmitting_after_success_without_new_input_queues_nothing(store: Store) -> None:
    sub = store.submit("quote", "case-1", {"amount": 10})
    _finish(store)

    again = store.submit("quote", "case-1")
    same = store.submit("quote", "case-1", {"amount": 10})

    assert again.run_id is None and same.run_id is None
    assert [r.status for r in store.runs_of(sub.task_id)] == [RunStatus.SUCCEEDED]
    assert len(store.inputs(sub.task_id)) == 1


def test_same_input_in_another_key_order_is_not_new(store: Store) -> None:
    sub = store.submit("quote", "case-1", {"a": 1, "b": [1, 2]})
    _finish(store)

    again = store.submit("quote", "case-1", {"b": [1, 2], "a": 1})

    assert again.run_id is None
    assert len(store.inputs(sub.task_id)) == 1


def test_new_input_is_attached_in_order_and_starts_a_new_run(store: Store) -> None:
    sub = store.submit("quote", "case-1", {"amount": 10}, now=100.0)
    first_run = _finish(store)

    later = store.submit("quote", "case-1", {"amount": 10, "broker_reply": "yes"}, now=200.0)

    assert later.task_id == sub.task_id
    assert later.created is False
    assert later.run_id is not None and later.run_id != first_run
    inputs = store.inputs(sub.task_id)
    assert [(i.seq, i.data, i.received_at) for i in inputs] == [
        (1, {"amount": 10}, 100.0),
        (2, {"amount": 10, "broker_reply": "yes"}, 200.0),
    ]
    runs = store.runs_of(sub.task_id)
    assert [(r.status, r.reason, r.attempt) for r in runs] == [
        (RunStatus.SUCCEEDED, "submitted", 1),
        (RunStatus.QUEUED, "submitted", 1),
    ]
    assert store.get_task(sub.task_id).status == TaskStatus.QUEUED


def test_new_input_while_a_run_is_queued_is_attached_without_a_second_run(store: Store) -> None:
    sub = store.submit("quote", "case-1", {"v": 1})

    again = store.submit("quote", "case-1", {"v": 2})

    assert again.run_id is None
    assert [i.data for i in store.inputs(sub.task_id)] == [{"v": 1}, {"v": 2}]
    assert len(store.runs_of(sub.task_id)) == 1


def test_input_that_returns_to_an_earlier_value_is_new_information(store: Store) -> None:
    sub = store.submit("quote", "case-1", {"v": 1})
    _finish(store)
    store.submit("quote", "case-1", {"v": 2})
    _finish(store)

    back = store.submit("quote", "case-1", {"v": 1})

    assert back.run_id is not None
    assert [i.seq for i in store.inputs(sub.task_id)] == [1, 2, 3]


def test_new_input_while_running_queues_a_run_that_waits_for_the_running_one(
    store: Store,
) -> None:
    sub = store.submit("quote", "case-1", {"v": 1})
    [running] = store.claim("w1", limit=5, lease_seconds=30)

    later = store.submit("quote", "case-1", {"v": 2})

    assert later.run_id is not None
    # One run at a time per task: the new run is not claimable while the first runs.
    assert store.claim("w2", limit=5, lease_seconds=30) == []
    store.complete(
        [
            Completion(
                run_id=running.run_id,
                task_id=sub.task_id,
                worker="w1",
                attempt=1,
                succeeded=True,
                finished_at=running.lease_expires_at - 29,
            )
        ]
    )
    [next_claim] = store.claim("w2", limit=5, lease_seconds=30)
    assert next_claim.run_id == later.run_id


def test_submit_keeps_reason_and_note(store: Store) -> None:
    sub = store.submit("quote", "case-1", reason="operator", note="broker called back")

    [run] = store.runs_of(sub.task_id)
    assert (run.reason, run.note) == ("operator", "broker called back")
    [claim] = store.claim("w1", limit=1, lease_seconds=30)
    assert (claim.agent, claim.key, claim.reason, claim.note) == (
        "quote",
        "case-1",
        "operator",
        "broker called back",
    )


def test_none_is_an_input_distinct_from_no_input(store: Store) -> None:
    sub = store.submit("quote", "case-1", None)

    assert [(i.seq, i.data) for i in store.inputs(sub.task_id)] == [(1, None)]


@pytest.mark.parametrize("data", [{"v": 1}, NO_INPUT], ids=["input", "no-input"])
def test_concurrent_submits_of_one_key_create_one_task_and_one_run(
    store: Store, data: Any
) -> None:
    # Without input PostgreSQL takes its one-statement path for a new task; the losers
    # of the race find the task and take the general one.
    barrier = threading.Barrier(8)
    results = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submit() -> None:
        try:
            barrier.wait()
            sub = (store.submit("quote", "case-race") if data is NO_INPUT
                   else store.submit("quote", "case-race", data))
            with lock:
                results.append(sub)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert errors == []
    assert len({r.task_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert len([r for r in results if r.run_id is not None]) == 1
    assert len(store.runs_of(results[0].task_id)) == 1
    assert len(store.inputs(results[0].task_id)) == (0 if data is NO_INPUT else 1)


def test_a_submission_that_queues_a_run_notifies_the_outboxes(pg_url: str) -> None:
    # Engine providers' outboxes LISTEN on the store's channel and hand a run over at
    # once instead of at their next poll.
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    listener = psycopg.connect(dsn, autocommit=True)
    listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def notified() -> int:
        return sum(1 for _ in listener.notifies(timeout=0.3, stop_after=5))

    try:
        with Store.open(pg_url) as store:
            first = store.submit("quote", "case-1")
            assert notified() == 1  # a new task: its first run is queued
            store.submit("quote", "case-1")
            assert notified() == 0  # nothing new, nothing queued
            _finish(store)
            store.submit("quote", "case-1", {"v": 2})
            assert notified() == 1  # new input: a new run
            assert len(store.runs_of(first.task_id)) == 2
    finally:
        listener.close()


def test_a_new_task_is_submitted_by_one_statement_in_its_own_transaction(
    pg_url: str
) -> None:
    # No BEGIN or COMMIT to wait for: the statement runs in autocommit mode. Any other
    # submission (the task exists, or input comes with it) takes a transaction.
    seen: list[tuple[bool, str]] = []
    with Store.open(pg_url) as store:

        @event.listens_for(store.engine, "before_cursor_execute")
        def _record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            seen.append((conn.connection.driver_connection.autocommit, statement.split()[0]))

        sub = store.submit("quote", "case-1")
        assert sub.created and sub.run_id is not None
        assert seen[-1:] == [(True, "WITH")] and [s for s in seen if s[0]] == seen[-1:]
        seen.clear()
        again = store.submit("quote", "case-1")  # exists: tried once, then the general path
        assert again.task_id == sub.task_id and again.run_id is None
        assert [s for s in seen if s[0]] == [(True, "WITH")]
        assert seen[1:] and not any(auto for auto, _ in seen[1:])
        seen.clear()
        store.submit("quote", "case-2", {"v": 1})
        assert seen and not any(auto for auto, _ in seen)
        assert len(store.runs_of(sub.task_id)) == 1


def test_input_that_cannot_be_stored_is_refused_naming_the_field(store: Store) -> None:
    with pytest.raises(OutputError, match=r"^input\.received is a datetime\.date"):
        store.submit("quote", "case-1", {"received": dt.date(2026, 1, 2)})

    assert store.list_tasks() == []


def test_models_given_as_input_are_stored_as_json(store: Store) -> None:
    @dataclasses.dataclass
    class Case:
        amount: int
        parties: tuple[str, ...]

    sub = store.submit("quote", "case-1", Case(10, ("ada", "bo")))

    assert [i.data for i in store.inputs(sub.task_id)] == [{"amount": 10, "parties": ["ada", "bo"]}]
    assert store.submit("quote", "case-1", {"amount": 10, "parties": ["ada", "bo"]}).run_id is None


def test_submit_many_submits_each_item_as_submit_would(store: Store) -> None:
    store.submit("quote", "case-1", {"amount": 1})  # exists already, same input
    subs = store.submit_many(
        [("quote", "case-1", {"amount": 1}), ("quote", "case-2"), ("kyc", "case-2", {"a": 2}),
         ("quote", "case-3", {"amount": 3}), ("quote", "case-2")],
        chunk=2, now=50.0,
    )

    assert [s.created for s in subs] == [False, True, True, True, False]
    assert subs[0].run_id is None and subs[4].run_id is None  # nothing new: no run
    assert subs[4].task_id == subs[1].task_id
    for s in subs[1:4]:
        [run] = store.runs_of(s.task_id)
        assert (run.id, run.status, run.created_at) == (s.run_id, RunStatus.QUEUED, 50.0)
    assert [i.data for i in store.inputs(subs[2].task_id)] == [{"a": 2}]
    assert len(store.list_tasks()) == 4
    # Input that changed is attached, as with submit (its queued run will see it).
    [again] = store.submit_many([("quote", "case-3", {"amount": 4})])
    assert again.task_id == subs[3].task_id and again.run_id is None
    assert [i.data for i in store.inputs(again.task_id)] == [{"amount": 3}, {"amount": 4}]


def test_submit_many_converts_every_input_before_writing_any(store: Store) -> None:
    with pytest.raises(OutputError, match=r"item 1's input\.received is a datetime\.date"):
        store.submit_many(
            [("quote", "case-1"), ("quote", "case-2", {"received": dt.date(2026, 1, 2)})]
        )
    assert store.list_tasks() == []
    with pytest.raises(ValueError, match="item 0: expected"):
        store.submit_many([("quote",)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"item 1: expected .* got 'kyc'"):
        store.submit_many([("quote", "case-1"), "kyc"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        store.submit_many([("quote", "case-1")], chunk=0)
    assert store.list_tasks() == []


def test_submit_many_commits_a_chunk_of_items_per_transaction(store: Store) -> None:
    commits: list[int] = []
    listener = lambda conn: commits.append(1)  # noqa: E731
    event.listen(store.engine, "commit", listener)
    try:
        subs = store.submit_many([("quote", f"case-{i}") for i in range(5)], chunk=2)
    finally:
        event.remove(store.engine, "commit", listener)

    assert len(commits) == 3  # 2 + 2 + 1
    assert all(s.created and s.run_id is not None for s in subs)
    # Seen from another connection: every chunk committed.
    with Store.open(store.url) as other:
        assert sorted(t.key for t in other.list_tasks()) == [f"case-{i}" for i in range(5)]
