"""Reading the store: tasks with derived statuses and filters, lookups, NotFound."""

from __future__ import annotations

import pytest

from tether import NotFound, Store, TaskStatus
from tether.store import Completion, Edge


def _finish(
    store: Store,
    agent: str,
    key: str,
    *,
    succeeded: bool = True,
    retry_at: float | None = None,
    edges: tuple[Edge, ...] = (),
) -> None:
    store.submit(agent, key, now=100.0)
    [claim] = store.claim("w1", limit=1, lease_seconds=30, now=100.0)
    assert (claim.agent, claim.key) == (agent, key)
    store.complete(
        [
            Completion(
                run_id=claim.run_id,
                task_id=claim.task_id,
                worker="w1",
                attempt=claim.attempt,
                succeeded=succeeded,
                finished_at=101.0,
                failure_class=None if succeeded else "retryable",
                failure_reason=None if succeeded else "503",
                retry_at=retry_at,
                edges=edges,
            )
        ]
    )


@pytest.fixture
def every_status(store: Store) -> Store:
    """Tasks in every derived status: agent `a` (four tasks), `b` (two) and `join` (one)."""
    _finish(store, "a", "done")  # succeeded
    _finish(store, "a", "broken", succeeded=False)  # failed, no retry
    _finish(store, "a", "flaky", succeeded=False, retry_at=10_000.0)  # retrying
    # pending: one of two triggers of a join fired
    _finish(store, "b", "up", edges=(Edge("x", "join", "k", ("x", "y")),))
    store.submit("b", "busy", now=100.0)
    store.claim("w1", limit=1, lease_seconds=30, now=100.0)  # running
    store.submit("a", "fresh", now=100.0)  # queued
    return store


@pytest.mark.parametrize(
    ("status", "refs"),
    [
        (TaskStatus.SUCCEEDED, ["b/up", "a/done"]),
        (TaskStatus.FAILED, ["a/broken"]),
        (TaskStatus.RETRYING, ["a/flaky"]),
        (TaskStatus.PENDING, ["join/k"]),
        (TaskStatus.RUNNING, ["b/busy"]),
        (TaskStatus.QUEUED, ["a/fresh"]),
    ],
)
def test_status_is_derived_from_the_latest_run_and_filters_the_list(
    every_status: Store, status: TaskStatus, refs: list[str]
) -> None:
    assert [t.ref for t in every_status.list_tasks(status=status)] == refs
    assert [t.ref for t in every_status.list_tasks(status=status.value)] == refs
    assert {every_status.get_task(ref).status for ref in refs} == {status}


def test_list_tasks_filters_by_agent_newest_first_with_run_counts(every_status: Store) -> None:
    tasks = every_status.list_tasks(agent="a")

    assert [t.key for t in tasks] == ["fresh", "flaky", "broken", "done"]
    assert [t.runs for t in tasks] == [1, 2, 1, 1]
    assert [t.ref for t in every_status.list_tasks(agent="b")] == ["b/busy", "b/up"]
    assert every_status.list_tasks(agent="nobody") == []
    assert [t.ref for t in every_status.list_tasks(agent="a", status="failed")] == ["a/broken"]
    assert every_status.list_tasks(agent="b", status="failed") == []


def test_list_tasks_respects_the_limit(every_status: Store) -> None:
    assert [t.ref for t in every_status.list_tasks(limit=2)] == ["a/fresh", "b/busy"]
    assert len(every_status.list_tasks()) == 7


def test_get_task_by_id_and_by_agent_slash_key(store: Store) -> None:
    sub = store.submit("quote", "broker/2024/17")
    other = store.submit("quote", "broker")

    by_id = store.get_task(sub.task_id)
    by_text_id = store.get_task(str(sub.task_id))
    by_ref = store.get_task("quote/broker/2024/17")

    assert by_id == by_text_id == by_ref
    assert (by_ref.agent, by_ref.key) == ("quote", "broker/2024/17")
    assert by_ref.ref == "quote/broker/2024/17"
    assert store.get_task("quote/broker").id == other.task_id


def test_get_task_not_found_says_what_was_asked(store: Store) -> None:
    store.submit("quote", "case-1")

    with pytest.raises(NotFound, match=r"no task 'quote/case-2'.*tether tasks"):
        store.get_task("quote/case-2")
    with pytest.raises(NotFound, match="no task '424242'"):
        store.get_task(424242)
    with pytest.raises(NotFound, match="'quote' is not a task: give a task id or AGENT/KEY"):
        store.get_task("quote")
    with pytest.raises(NotFound, match="no run 424242"):
        store.get_run(424242)


def test_task_records_serialise_for_the_cli(store: Store) -> None:
    sub = store.submit("quote", "case-1", now=100.0)

    data = store.get_task(sub.task_id).to_dict()

    assert data == {
        "id": sub.task_id,
        "agent": "quote",
        "key": "case-1",
        "status": "queued",
        "created_at": 100.0,
        "runs": 1,
    }


def test_inputs_and_runs_of_an_unknown_task_are_empty(store: Store) -> None:
    assert store.inputs(999) == []
    assert store.runs_of(999) == []
    assert store.triggers_in(999) == []
    assert store.upstream_outputs(999) == {}


def test_runs_of_before_run_gives_only_earlier_runs(store: Store) -> None:
    _finish(store, "a", "k", succeeded=False, retry_at=100.0)
    task = store.get_task("a/k")
    first, second = store.runs_of(task.id)

    assert [r.id for r in store.runs_of(task.id, before_run=second.id)] == [first.id]
    assert store.runs_of(task.id, before_run=first.id) == []
