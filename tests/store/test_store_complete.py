"""Recording outcomes: run, steps, trigger edges and retries in one transaction."""

from __future__ import annotations

from typing import Any

import pytest

from tether import StoreError, TaskStatus
from tether.errors import NotFound
from tether.store import (
    Claim,
    Completion,
    Edge,
    FailureClass,
    Follow,
    RunStatus,
    StepWrite,
    Store,
)
from tether.store.verify import verify


def _claim(store: Store, agent: str, key: str, worker: str = "w1", now: float = 100.0) -> Claim:
    store.submit(agent, key, now=now)
    [claim] = store.claim(worker, limit=1, lease_seconds=30, now=now)
    return claim


def _step(seq: int, name: str, **kw: Any) -> StepWrite:
    values: dict[str, Any] = {
        "key": None,
        "input": None,
        "output": None,
        "status": "succeeded",
        "error": None,
        "started_at": 100.0 + seq,
        "finished_at": 100.5 + seq,
    }
    values.update(kw)
    return StepWrite(seq=seq, name=name, **values)


def _done(claim: Claim, worker: str = "w1", **kw: Any) -> Completion:
    values: dict[str, Any] = {"succeeded": True, "finished_at": 110.0}
    values.update(kw)
    return Completion(
        run_id=claim.run_id,
        task_id=claim.task_id,
        worker=worker,
        attempt=claim.attempt,
        **values,
    )


def test_success_records_output_steps_and_edges(store: Store) -> None:
    claim = _claim(store, "kyc", "case-1")
    completion = _done(
        claim,
        output={"verdict": "clear"},
        steps=(
            _step(1, "fetch id", input={"doc": 1}, output={"name": "Ada"}),
            _step(2, "check list", output=["ok"]),
        ),
        edges=(Edge(name="kyc.cleared", agent="quote", key="case-1", requires=("kyc.cleared",)),),
    )

    assert store.complete([completion]) == [claim.run_id]

    run = store.get_run(claim.run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert run.output == {"verdict": "clear"}
    assert run.finished_at == 110.0
    assert run.lease_expires_at is None
    assert (run.failure_class, run.failure_reason) == (None, None)
    assert [(s.seq, s.name, s.input, s.output, s.status) for s in run.steps] == [
        (1, "fetch id", {"doc": 1}, {"name": "Ada"}, "succeeded"),
        (2, "check list", None, ["ok"], "succeeded"),
    ]
    assert run.steps[0].duration == pytest.approx(0.5)
    down = store.get_task("quote/case-1")
    assert down.status == TaskStatus.QUEUED
    [edge] = store.triggers_out(claim.task_id)
    assert (edge.name, edge.upstream_run_id, edge.downstream_task_id) == (
        "kyc.cleared",
        claim.run_id,
        down.id,
    )
    assert (edge.upstream_ref, edge.downstream_ref) == ("kyc/case-1", "quote/case-1")
    assert store.triggers_in(down.id) == [edge]
    assert store.all_triggers() == [edge]
    [down_run] = store.runs_of(down.id)
    assert (down_run.reason, down_run.attempt, down_run.available_at) == ("trigger", 1, 110.0)
    assert store.upstream_outputs(down.id) == {
        "kyc.cleared": ("kyc/case-1", {"verdict": "clear"})
    }


def test_an_edge_can_name_another_key_downstream(store: Store) -> None:
    claim = _claim(store, "kyc", "case-1")

    store.complete(
        [_done(claim, edges=(Edge("kyc.cleared", "onboard", "customer-9", ("kyc.cleared",)),))]
    )

    down = store.get_task("onboard/customer-9")
    assert [t.upstream_ref for t in store.triggers_in(down.id)] == ["kyc/case-1"]


def test_failure_records_class_and_reason_and_queues_the_retry(store: Store) -> None:
    claim = _claim(store, "kyc", "case-1")

    accepted = store.complete(
        [
            _done(
                claim,
                succeeded=False,
                failure_class="retryable",
                failure_reason="HTTPStatusError: 503",
                steps=(_step(1, "call registry", status="failed", error="HTTPStatusError: 503"),),
                retry_at=125.0,
            )
        ]
    )

    assert accepted == [claim.run_id]
    first, retry = store.runs_of(claim.task_id)
    assert first.status == RunStatus.FAILED
    assert first.failure_class == FailureClass.RETRYABLE
    assert first.failure_reason == "HTTPStatusError: 503"
    assert first.output is None
    assert [(s.status, s.error) for s in first.steps] == [("failed", "HTTPStatusError: 503")]
    assert (retry.status, retry.reason, retry.attempt) == (RunStatus.QUEUED, "retry", 2)
    assert (retry.created_at, retry.available_at) == (110.0, 125.0)
    assert store.get_task(claim.task_id).status == TaskStatus.RETRYING
    # Not claimable before its time; then claimed as attempt 2.
    assert store.claim("w1", limit=1, lease_seconds=30, now=124.0) == []
    [again] = store.claim("w1", limit=1, lease_seconds=30, now=125.0)
    assert (again.run_id, again.attempt, again.reason) == (retry.id, 2, "retry")


def test_terminal_failure_queues_nothing(store: Store) -> None:
    claim = _claim(store, "kyc", "case-1")

    store.complete(
        [_done(claim, succeeded=False, failure_class="terminal", failure_reason="sanctions hit")]
    )

    [run] = store.runs_of(claim.task_id)
    assert (run.status, run.failure_class) == (RunStatus.FAILED, FailureClass.TERMINAL)
    assert store.get_task(claim.task_id).status == TaskStatus.FAILED
    assert store.pending().queued == 0


def test_completion_from_a_worker_that_does_not_own_the_run_is_discarded_whole(
    store: Store,
) -> None:
    claim = _claim(store, "kyc", "case-1", worker="w1")
    impostor = _done(
        claim,
        worker="w2",
        output={"verdict": "clear"},
        steps=(_step(1, "fetch id"),),
        edges=(Edge("kyc.cleared", "quote", "case-1", ("kyc.cleared",)),),
    )

    assert store.complete([impostor]) == []

    run = store.get_run(claim.run_id)
    assert (run.status, run.worker, run.output, run.steps) == (RunStatus.RUNNING, "w1", None, ())
    assert store.all_triggers() == []
    assert [t.ref for t in store.list_tasks()] == ["kyc/case-1"]


def test_completion_after_the_run_was_reaped_is_discarded_whole(store: Store) -> None:
    claim = _claim(store, "kyc", "case-1", worker="w1", now=100.0)
    assert store.reap(lambda agent, attempt: None, now=200.0) == [claim.run_id]

    late = _done(
        claim,
        output={"verdict": "clear"},
        steps=(_step(1, "fetch id"),),
        edges=(Edge("kyc.cleared", "quote", "case-1", ("kyc.cleared",)),),
    )
    accepted, _ = store.exchange([late], worker="w1", limit=0, lease_seconds=30)

    assert accepted == []
    run = store.get_run(claim.run_id)
    assert run.status == RunStatus.FAILED
    assert run.failure_reason is not None and run.failure_reason.startswith("worker lost")
    assert run.output is None and run.steps == ()
    assert store.all_triggers() == []
    assert [t.ref for t in store.list_tasks()] == ["kyc/case-1"]


def test_a_completion_delivered_twice_records_one_edge_and_one_downstream_run(
    store: Store,
) -> None:
    claim = _claim(store, "kyc", "case-1")
    completion = _done(
        claim,
        output={"ok": 1},
        steps=(_step(1, "fetch id"),),
        edges=(Edge("kyc.cleared", "quote", "case-1", ("kyc.cleared",)),),
    )

    assert store.complete([completion, completion]) == [claim.run_id]
    assert store.complete([completion]) == []

    assert len(store.all_triggers()) == 1
    assert len(store.get_run(claim.run_id).steps) == 1
    down = store.get_task("quote/case-1")
    assert len(store.runs_of(down.id)) == 1


def test_a_join_queues_the_downstream_run_once_every_required_trigger_fired(
    store: Store,
) -> None:
    requires = ("kyc.cleared", "risk.scored")
    kyc = _claim(store, "kyc", "case-1")
    store.complete([_done(kyc, edges=(Edge("kyc.cleared", "quote", "case-1", requires),))])

    quote = store.get_task("quote/case-1")
    assert quote.status == TaskStatus.PENDING
    assert quote.runs == 0
    assert store.pending().queued == 0

    # The same trigger firing again (a later kyc run) does not complete the join.
    store.submit("kyc", "case-1", {"new": "info"})
    [kyc2] = store.claim("w1", limit=1, lease_seconds=30)
    store.complete([_done(kyc2, edges=(Edge("kyc.cleared", "quote", "case-1", requires),))])
    assert store.get_task(quote.id).status == TaskStatus.PENDING

    risk = _claim(store, "risk", "case-1")
    store.complete([_done(risk, output={"score": 3},
                          edges=(Edge("risk.scored", "quote", "case-1", requires),))])

    [run] = store.runs_of(quote.id)
    assert (run.reason, run.status) == ("trigger", RunStatus.QUEUED)
    assert {t.name for t in store.triggers_in(quote.id)} == set(requires)
    assert len(store.triggers_in(quote.id)) == 3


def test_both_halves_of_a_join_in_one_batch_queue_one_run(store: Store) -> None:
    requires = ("a.done", "b.done")
    store.submit("a", "k", now=100.0)
    store.submit("b", "k", now=100.0)
    claims = store.claim("w1", limit=2, lease_seconds=30, now=100.0)
    by_agent = {c.agent: c for c in claims}

    store.complete(
        [
            _done(by_agent["a"], edges=(Edge("a.done", "c", "k", requires),)),
            _done(by_agent["b"], edges=(Edge("b.done", "c", "k", requires),)),
        ]
    )

    down = store.get_task("c/k")
    assert [r.reason for r in store.runs_of(down.id)] == ["trigger"]


def test_a_keyed_step_written_as_running_is_finished_in_place(store: Store) -> None:
    claim = _claim(store, "quote", "case-1")
    store.insert_steps(
        claim.task_id,
        claim.run_id,
        [_step(1, "email broker", key="email-1", status="running", finished_at=None)],
    )
    assert [s.status for s in store.get_run(claim.run_id).steps] == ["running"]

    store.complete(
        [
            _done(
                claim,
                steps=(
                    _step(1, "email broker", key="email-1", output={"id": "m1"}, inserted=True),
                    _step(2, "log"),
                ),
            )
        ]
    )

    steps = store.get_run(claim.run_id).steps
    assert [(s.seq, s.key, s.status, s.output) for s in steps] == [
        (1, "email-1", "succeeded", {"id": "m1"}),
        (2, None, "succeeded", None),
    ]
    assert steps[0].finished_at == 101.5


def test_a_failed_write_records_nothing_of_the_batch(store: Store) -> None:
    """Outcome, steps and edges share one transaction: when one part fails, none lands."""
    claim = _claim(store, "kyc", "case-1")
    broken = _done(
        claim,
        output={"ok": 1},
        steps=(_step(1, "a"), _step(1, "duplicate seq")),
        edges=(Edge("kyc.cleared", "quote", "case-1", ("kyc.cleared",)),),
    )

    with pytest.raises(StoreError, match="store write failed"):
        store.complete([broken])

    run = store.get_run(claim.run_id)
    assert (run.status, run.output, run.steps) == (RunStatus.RUNNING, None, ())
    assert store.all_triggers() == []
    assert [t.ref for t in store.list_tasks()] == ["kyc/case-1"]


def test_a_batch_of_outcomes_lands_as_each_alone_would(store: Store) -> None:
    """Several completions in one call (PostgreSQL ends their runs in one statement): each
    run gets its own outcome, a stale one is discarded, and the ledger holds."""
    ok, bad, stale = (_claim(store, "kyc", f"case-{i}") for i in range(3))
    output = {"verdict": "clear", "scores": [0.5, 1, None], "nested": {"ä": "ü", "n": None}}
    accepted = store.complete([
        _done(ok, output=output, waiting_for=None,
              edges=(Edge("kyc.cleared", "quote", "case-0", ("kyc.cleared",)),)),
        _done(bad, succeeded=False, failure_class="terminal", failure_reason="bad id"),
        _done(stale, worker="w-lost", output={"x": 1},
              edges=(Edge("kyc.cleared", "quote", "case-2", ("kyc.cleared",)),)),
    ])

    assert sorted(accepted) == sorted([ok.run_id, bad.run_id])
    first, second, third = (store.get_run(c.run_id) for c in (ok, bad, stale))
    assert (first.status, first.output, first.failure_class) == ("succeeded", output, None)
    assert (second.status, second.output, second.failure_class, second.failure_reason) == (
        "failed", None, "terminal", "bad id")
    assert (third.status, third.output, third.finished_at) == ("running", None, None)
    assert first.lease_expires_at is None and second.lease_expires_at is None
    assert store.get_task("quote/case-0").status == TaskStatus.QUEUED
    with pytest.raises(NotFound):  # the stale completion's edge wrote nothing
        store.get_task("quote/case-2")
    report = verify(store.engine)
    assert report.ok, report


def test_exchange_records_and_claims_in_one_call(store: Store) -> None:
    first = _claim(store, "kyc", "case-1", now=100.0)
    store.submit("kyc", "case-2", now=100.0)

    accepted, claims = store.exchange(
        [_done(first, edges=(Edge("kyc.cleared", "quote", "case-1", ("kyc.cleared",)),))],
        worker="w1",
        limit=5,
        lease_seconds=30,
        now=120.0,
    )

    assert accepted == [first.run_id]
    # The triggered downstream run (available at 110) and the queued case-2 run.
    assert sorted(c.key for c in claims) == ["case-1", "case-2"]
    assert {c.agent for c in claims} == {"kyc", "quote"}
    assert all(c.lease_expires_at == 150.0 for c in claims)


def test_upstream_outputs_give_the_newest_firing_of_each_trigger(store: Store) -> None:
    edge = (Edge("kyc.cleared", "quote", "case-1", ("kyc.cleared",)),)
    first = _claim(store, "kyc", "case-1")
    store.complete([_done(first, output={"v": 1}, edges=edge)])
    store.submit("kyc", "case-1", {"new": "document"})
    [second] = store.claim("w1", limit=1, lease_seconds=30, agents=["kyc"])
    assert second.task_id == first.task_id

    store.complete([_done(second, output={"v": 2}, edges=edge)])

    down = store.get_task("quote/case-1")
    assert store.upstream_outputs(down.id) == {"kyc.cleared": ("kyc/case-1", {"v": 2})}
    assert [t.upstream_run_id for t in store.triggers_in(down.id)] == [
        first.run_id,
        second.run_id,
    ]


# -- following a chain on the worker that recorded it (the Celery provider) --------------


def _follow(store: Store, completions: list[Completion], *, agents: set[str],
            wanted: set[int] | None = None) -> tuple[list[int], list[tuple[int, str]], Follow]:
    follow = Follow(worker="w1", lease_seconds=30.0, agents=frozenset(agents),
                    wanted={c.run_id for c in completions} if wanted is None else wanted)
    dispatched: dict[int, list[tuple[int, str]]] = {}
    with store._write() as conn:
        accepted = store._complete(conn, completions, dispatched, follow=follow)
    return accepted, [r for c in completions for r in dispatched.get(c.run_id, [])], follow


def _edge(agent: str, key: str, name: str = "done", requires: tuple[str, ...] = ()) -> Edge:
    return Edge(name=name, agent=agent, key=key, requires=requires or (name,))


def test_a_followed_completion_claims_its_new_downstream_run_for_the_same_worker(
    store: Store,
) -> None:
    claim = _claim(store, "a", "k")
    done = _done(claim, edges=(_edge("b", "k"),))

    accepted, dispatched, follow = _follow(store, [done], agents={"a", "b"})

    assert accepted == [claim.run_id]
    assert dispatched == []  # claimed, so not handed to the engine
    nxt = follow.claims[claim.run_id]
    assert (nxt.agent, nxt.key, nxt.attempt, nxt.reason) == ("b", "k", 1, "trigger")
    run = store.get_run(nxt.run_id)
    assert (run.status, run.worker) == (RunStatus.RUNNING, "w1")
    assert run.lease_expires_at == pytest.approx(nxt.lease_expires_at)
    assert run.started_at is not None and run.lease_expires_at > run.started_at
    # Nobody else can claim it, and it completes like any claimed run, edges and all.
    assert store.claim("w2", limit=5, lease_seconds=30) == []
    assert store.complete([_done(nxt, finished_at=120.0)]) == [nxt.run_id]
    assert store.get_task("b/k").status == TaskStatus.SUCCEEDED
    [edge] = store.triggers_out(claim.task_id)
    assert edge.downstream_task_id == nxt.task_id == store.get_task("b/k").id


def test_only_new_tasks_of_known_agents_are_followed_and_only_one_per_completion(
    store: Store,
) -> None:
    claim = _claim(store, "a", "k")
    store.submit("c", "old", now=105.0)  # exists already, with a queued run
    done = _done(claim, edges=(
        _edge("b", "k"), _edge("b", "k2"), _edge("c", "old"), _edge("x", "k"),
    ))

    _, dispatched, follow = _follow(store, [done], agents={"a", "b", "c"})

    nxt = follow.claims[claim.run_id]
    assert (nxt.agent, nxt.key) == ("b", "k")
    assert store.get_run(nxt.run_id).status == RunStatus.RUNNING
    # The second new task of b and the agent this worker lacks are queued and handed over;
    # c/old already had a queued run, which will see the newest state: nothing new.
    handed = {(store.get_task(store.get_run(r).task_id).key, agent) for r, agent in dispatched}
    assert handed == {("k2", "b"), ("k", "x")}
    for run_id, _ in dispatched:
        assert store.get_run(run_id).status == RunStatus.QUEUED
    assert [r.status for r in store.runs_of(store.get_task("c/old").id)] == [RunStatus.QUEUED]


def test_two_edges_of_one_batch_to_one_new_task_create_it_once(store: Store) -> None:
    # Two completions in one transaction each trigger c/k (not a join): the task and its
    # run are created once, whichever way the dialect records edges (PostgreSQL: one
    # statement for the batch's edges to new tasks), and both triggers are recorded.
    store.submit("a", "k", now=100.0)
    store.submit("b", "k", now=100.0)
    claims = {c.agent: c for c in store.claim("w1", limit=2, lease_seconds=30, now=100.0)}
    first = _done(claims["a"], edges=(_edge("c", "k", "a.done"),))
    second = _done(claims["b"], edges=(_edge("c", "k", "b.done"),))

    accepted, dispatched, follow = _follow(store, [first, second], agents={"a", "b", "c"})

    assert sorted(accepted) == sorted([first.run_id, second.run_id])
    down = store.get_task("c/k")
    assert len(store.list_tasks(agent="c")) == 1
    running, queued = store.runs_of(down.id)
    # The first completion's edge made the task, so its worker follows it; the second
    # is new input for a task with a run already: a second run, queued behind it and
    # handed to the engine.
    assert running.status == RunStatus.RUNNING and running.worker == "w1"
    assert queued.status == RunStatus.QUEUED
    assert list(follow.claims) == [first.run_id]
    assert follow.claims[first.run_id].run_id == running.id
    assert dispatched == [(queued.id, "c")]
    fired = {t.name for t in store.triggers_in(down.id)}
    assert fired == {"a.done", "b.done"}
    assert verify(store.engine).ok


def test_a_join_edge_first_does_not_stop_the_completion_following_its_next_edge(
    store: Store,
) -> None:
    claim = _claim(store, "a", "k")
    done = _done(claim, edges=(
        _edge("j", "k", "a.done", ("a.done", "x.done")),  # a join: waits for x.done too
        _edge("b", "k"),
    ))

    _, dispatched, follow = _follow(store, [done], agents={"a", "b", "j"})

    nxt = follow.claims[claim.run_id]
    assert (nxt.agent, nxt.key) == ("b", "k")
    assert dispatched == []
    assert store.runs_of(store.get_task("j/k").id) == []  # the join has not fired yet


def test_a_completion_not_asked_to_follow_queues_its_downstream_run(store: Store) -> None:
    claim = _claim(store, "a", "k")
    done = _done(claim, edges=(_edge("b", "k"),))

    _, dispatched, follow = _follow(store, [done], agents={"a", "b"}, wanted=set())

    assert follow.claims == {}
    [(run_id, agent)] = dispatched
    assert agent == "b" and store.get_run(run_id).status == RunStatus.QUEUED


def test_a_join_is_not_followed_its_last_trigger_queues_it(store: Store) -> None:
    first, second = _claim(store, "a", "k"), _claim(store, "b", "k")
    both = ("a.done", "b.done")
    _, _, follow1 = _follow(store, [_done(first, edges=(_edge("j", "k", "a.done", both),))],
                            agents={"a", "b", "j"})
    _, dispatched, follow2 = _follow(
        store, [_done(second, edges=(_edge("j", "k", "b.done", both),))], agents={"a", "b", "j"})

    assert follow1.claims == {} and follow2.claims == {}
    [(run_id, agent)] = dispatched
    assert agent == "j" and store.get_run(run_id).status == RunStatus.QUEUED


def test_a_discarded_completion_follows_nothing(store: Store) -> None:
    claim = _claim(store, "a", "k")
    stale = _done(claim, worker="w-lost", edges=(_edge("b", "k"),))

    accepted, dispatched, follow = _follow(store, [stale], agents={"a", "b"})

    assert (accepted, dispatched, follow.claims) == ([], [], {})
    with pytest.raises(NotFound):
        store.get_task("b/k")


def test_a_completion_waits_for_an_append_in_flight_and_chains_after_it(store: Store) -> None:
    """New input lands on a task while its run is being recorded: the record waits for the
    input's transaction and chains its entries after the input's (no fork, no failure)."""
    import threading

    claim = _claim(store, "kyc", "c1")
    result: dict[str, Any] = {}
    with store._write() as conn:
        # An input arriving now holds the task's chain until it commits.
        record = store._attach_input(conn, claim.task_id, {"doc": 2}, 105.0)
        assert record is not None
        store._append(conn, claim.task_id, [("input", record)], 105.0)

        def complete() -> None:
            try:
                result["accepted"] = store.complete([_done(claim, output={"ok": True})])
            except Exception as exc:  # surfaced below
                result["error"] = exc

        worker = threading.Thread(target=complete)
        worker.start()
        worker.join(0.5)
        # On PostgreSQL the record waits for the chain's lock; SQLite serialises writers.
        assert worker.is_alive() or store.dialect == "sqlite"
    worker.join(10)

    assert "error" not in result, result.get("error")
    assert result["accepted"] == [claim.run_id]
    report = verify(store.engine)
    assert report.ok, report


def test_a_driver_error_in_a_postgresql_pipeline_surfaces_as_the_store_error(
    pg_url: str,
) -> None:
    """Statements sent below SQLAlchemy (pipeline mode) fail like the others: a StoreError
    naming the database's message, with the driver's error (and its SQLSTATE, which the
    deadlock retry reads) kept inside."""
    from sqlalchemy import text

    from tether.store.store import _driver

    store = Store.open(pg_url)
    try:
        with (pytest.raises(StoreError, match="division by zero") as caught,
              store._write() as conn, _driver(conn) as raw, raw.pipeline()):
            raw.execute("SELECT 1 / 0")
        assert getattr(caught.value.__cause__.orig, "sqlstate", None) == "22012"
        with store.engine.connect() as conn:  # the pooled connection is usable again
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        store.close()
