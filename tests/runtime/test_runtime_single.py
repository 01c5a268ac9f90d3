"""Executing runs by id (engine providers): the group committer's claims and records."""

from __future__ import annotations

from concurrent.futures import Future

from tether.runtime.single import GroupCommit, Recorded
from tether.store import Claim, Completion, Edge, Store
from tether.store.verify import verify


def test_a_run_asked_for_twice_in_one_batch_is_claimed_once(store: Store) -> None:
    run_id = store.submit("kyc", "case-1").run_id
    assert run_id is not None
    committer = GroupCommit(store, worker="w1", lease_seconds=30, inline_dispatch=False)
    try:
        first: Future[Claim | None] = Future()
        second: Future[Claim | None] = Future()
        # Two deliveries of the same message, in the same transaction.
        committer._commit([(run_id, first), (run_id, second)], [])
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
        done = Completion(
            run_id=first, task_id=claim.task_id, worker="w1", attempt=1, succeeded=True,
            finished_at=claim.lease_expires_at - 29, output={"ok": True},
            edges=(Edge(name="kyc.done", agent="sanctions", key="case-1",
                        requires=("kyc.done",)),),
        )
        claimed: Future[Claim | None] = Future()
        recorded: Future[Recorded] = Future()
        before = committer.transactions
        committer._commit([(second, claimed)], [(done, True, recorded)])
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
        committer._commit([(second, claimed)], [(stale, False, recorded)])
        assert not recorded.result().recorded
        assert claimed.result() is not None
    finally:
        committer.close()
    with Store.open(store.url) as other:
        assert other.get_run(second).status == "running"
        assert other.get_run(first).status == "running"  # still w1's
