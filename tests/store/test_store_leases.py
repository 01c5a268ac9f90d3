"""Lost workers and stopping workers: reap expired leases, release unfinished runs."""

from __future__ import annotations

from tether import Store, TaskStatus
from tether.store import FailureClass, Pending, RunStatus


def test_reap_fails_an_expired_run_as_worker_lost_and_queues_the_next_attempt(
    store: Store,
) -> None:
    sub = store.submit("quote", "case-1", now=100.0)
    [claim] = store.claim("host:42:abc", limit=1, lease_seconds=10, now=100.0)
    asked: list[tuple[str, int]] = []

    def decide(agent: str, attempt: int) -> float | None:
        asked.append((agent, attempt))
        return 130.0

    assert store.reap(decide, now=110.5) == [claim.run_id]

    assert asked == [("quote", 1)]
    lost, retry = store.runs_of(sub.task_id)
    assert lost.status == RunStatus.FAILED
    assert lost.failure_class == FailureClass.RETRYABLE
    assert lost.failure_reason is not None
    assert lost.failure_reason.startswith("worker lost")
    assert "host:42:abc" in lost.failure_reason
    assert (lost.finished_at, lost.lease_expires_at) == (110.5, None)
    assert (retry.status, retry.reason, retry.attempt, retry.available_at) == (
        RunStatus.QUEUED,
        "retry",
        2,
        130.0,
    )
    assert store.get_task(sub.task_id).status == TaskStatus.RETRYING


def test_reap_leaves_live_leases_alone(store: Store) -> None:
    store.submit("quote", "case-1", now=100.0)
    [claim] = store.claim("w1", limit=1, lease_seconds=10, now=100.0)

    assert store.reap(lambda a, n: 0.0, now=109.9) == []
    assert store.reap(lambda a, n: 0.0, now=110.0) == []  # expires strictly after
    assert store.get_run(claim.run_id).status == RunStatus.RUNNING


def test_reap_without_a_retry_leaves_the_task_failed(store: Store) -> None:
    sub = store.submit("quote", "case-1", now=100.0)
    store.claim("w1", limit=1, lease_seconds=10, now=100.0)

    reaped = store.reap(lambda agent, attempt: None, now=200.0)

    assert len(reaped) == 1
    [run] = store.runs_of(sub.task_id)
    assert run.status == RunStatus.FAILED
    assert store.get_task(sub.task_id).status == TaskStatus.FAILED
    assert store.pending().queued == 0


def test_reap_counts_attempts_on_from_the_lost_run(store: Store) -> None:
    sub = store.submit("quote", "case-1", now=100.0)
    store.claim("w1", limit=1, lease_seconds=10, now=100.0)
    store.reap(lambda a, n: 150.0, now=120.0)
    [second] = store.claim("w2", limit=1, lease_seconds=10, now=150.0)
    assert second.attempt == 2
    attempts: list[int] = []

    def decide(agent: str, attempt: int) -> float:
        attempts.append(attempt)
        return 300.0

    store.reap(decide, now=170.0)

    assert attempts == [2]
    assert [r.attempt for r in store.runs_of(sub.task_id)] == [1, 2, 3]


def test_release_gives_back_a_workers_runs_at_the_same_attempt(store: Store) -> None:
    sub = store.submit("quote", "case-1", now=100.0)
    [claim] = store.claim("w1", limit=1, lease_seconds=30, now=100.0)

    released = store.release("w1", [claim.run_id], reason="worker w1 stopped")

    assert released == [claim.run_id]
    stopped, again = store.runs_of(sub.task_id)
    assert (stopped.status, stopped.failure_class, stopped.failure_reason) == (
        RunStatus.FAILED,
        FailureClass.RETRYABLE,
        "worker w1 stopped",
    )
    assert stopped.lease_expires_at is None
    assert (again.status, again.reason, again.attempt) == (RunStatus.QUEUED, "retry", 1)
    [reclaimed] = store.claim("w2", limit=1, lease_seconds=30)
    assert reclaimed.run_id == again.id


def test_release_touches_only_runs_the_worker_holds(store: Store) -> None:
    store.submit("quote", "case-1", now=100.0)
    store.submit("quote", "case-2", now=100.0)
    [mine] = store.claim("w1", limit=1, lease_seconds=30, now=100.0)
    [theirs] = store.claim("w2", limit=1, lease_seconds=30, now=100.0)

    assert store.release("w1", [theirs.run_id], reason="stop") == []
    assert store.release("w1", [], reason="stop") == []

    assert store.get_run(theirs.run_id).status == RunStatus.RUNNING
    assert store.get_run(mine.run_id).status == RunStatus.RUNNING


def test_pending_counts_queued_running_expired_and_the_next_due_run(store: Store) -> None:
    assert store.pending(now=100.0) == Pending(queued=0, running=0, next_at=None, expired=0)
    for i, at in enumerate((100.0, 105.0, 110.0, 120.0)):
        store.submit("quote", f"case-{i}", now=at)
    store.claim("w1", limit=1, lease_seconds=10, now=100.0)  # case-0, lease to 110
    store.claim("w2", limit=1, lease_seconds=50, now=105.0)  # case-1, lease to 155

    early = store.pending(now=106.0)
    late = store.pending(now=111.0)

    assert (early.queued, early.running, early.next_at, early.expired) == (2, 2, 110.0, 0)
    assert (late.queued, late.running, late.next_at, late.expired) == (2, 2, 110.0, 1)


def test_pending_and_reap_can_be_limited_to_some_agents(store: Store) -> None:
    store.submit("quote", "case-1", now=100.0)
    store.submit("kyc", "case-1", now=100.0)
    store.submit("kyc", "case-2", now=130.0)
    store.claim("w1", limit=2, lease_seconds=10, now=100.0)  # both case-1 runs

    quote = store.pending(agents=["quote"], now=120.0)
    kyc = store.pending(agents=["kyc"], now=120.0)

    assert (quote.queued, quote.running, quote.next_at, quote.expired) == (0, 1, None, 1)
    assert (kyc.queued, kyc.running, kyc.next_at, kyc.expired) == (1, 1, 130.0, 1)
    reaped = store.reap(lambda a, n: None, agents=["quote"], now=120.0)
    assert [store.get_run(r).task_id for r in reaped] == [store.get_task("quote/case-1").id]
    assert store.get_task("kyc/case-1").status == TaskStatus.RUNNING
    assert store.reap(lambda a, n: None, agents=[], now=120.0) == []
