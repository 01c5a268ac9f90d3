"""Executing runs by id (engine providers): the group committer's claims and records."""

from __future__ import annotations

from concurrent.futures import Future

from tether.runtime.single import GroupCommit
from tether.store import Claim, Store


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
