"""The outbox dispatcher of engine providers: on PostgreSQL one acts per outbox at a time."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import text

import tether
from tether import Context, Project
from tether.providers.base import Dispatcher
from tether.runtime.single import RunOne
from tether.store.statements import NOTIFY_CHANNEL

MakeProject = Callable[..., Project]


def _solo(make_project: MakeProject, **settings: str) -> Project:
    """A project with one agent, ``solo``, that does nothing."""

    @tether.agent
    def solo(ctx: Context) -> None:
        return None

    return make_project([solo], **settings)


def _dispatcher(project: Project, published: list[tuple[int, str]], outbox: str) -> Dispatcher:
    return Dispatcher(RunOne(project.store, project.graph), published.extend, poll=0.01,
                      outbox=outbox)


def test_one_dispatcher_per_outbox_acts_and_another_takes_over_when_it_stops(
    make_project: MakeProject, pg_url: str
) -> None:
    project = _solo(make_project, database_url=pg_url)
    first_out: list[tuple[int, str]] = []
    second_out: list[tuple[int, str]] = []
    other_out: list[tuple[int, str]] = []
    first = _dispatcher(project, first_out, "celery:q1")
    second = _dispatcher(project, second_out, "celery:q1")
    other = _dispatcher(project, other_out, "celery:q2")  # another queue: its own outbox
    try:
        run1 = project.submit("solo", "k1").run_id
        assert first.tick() == 1 and first.leading
        run2 = project.submit("solo", "k2").run_id
        assert second.tick() == 0 and not second.leading  # the lock is held
        assert other.tick() == 1 and other.leading  # it published k2: separate outbox
        assert first_out == [(run1, "solo")] and second_out == []
        assert other_out == [(run2, "solo")]

        first.stop()  # its session ends, and the lock with it
        run3 = project.submit("solo", "k3").run_id
        time.sleep(0.05)  # a non-holder tries for the lock once per poll (0.01 s here)
        assert second.tick() == 1 and second.leading
        assert second_out == [(run3, "solo")]
    finally:
        for d in (first, second, other):
            d.stop()
            d.runner.close()


def _listeners(project: Project) -> int:
    """Sessions on the store's database that listen for due runs (their last statement)."""
    with project.store.engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = :listen"), {"listen": f"LISTEN {NOTIFY_CHANNEL}"}).scalar_one())


def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def test_only_the_acting_dispatcher_listens_and_its_successor_takes_over_listening(
    make_project: MakeProject, pg_url: str
) -> None:
    project = _solo(make_project, database_url=pg_url)
    first = _dispatcher(project, [], "celery:q1")
    second = _dispatcher(project, [], "celery:q1")
    try:
        first.start()
        _until(lambda: first.leading and _listeners(project) == 1, "the first listens")
        second.start()
        time.sleep(0.5)  # 50 of the second's polls: it would have listened by now
        assert not second.leading and _listeners(project) == 1

        first.stop()  # its lock and its listening session end
        _until(lambda: second.leading, "the second takes over")
        _until(lambda: _listeners(project) == 1, "the second listens")
    finally:
        for d in (first, second):
            d.stop()
            d.runner.close()


def test_each_submission_wakes_the_listening_dispatcher_long_before_its_poll(
    make_project: MakeProject, pg_url: str
) -> None:
    # A poll of a minute: only the store's notifications can bring these runs out in time,
    # one after another on the same listening session.
    project = _solo(make_project, database_url=pg_url)
    published: list[tuple[int, str]] = []
    dispatcher = Dispatcher(RunOne(project.store, project.graph), published.extend,
                            poll=60.0, outbox="celery:q1")
    try:
        dispatcher.start()
        _until(lambda: dispatcher.leading and _listeners(project) == 1, "it listens")
        runs = []
        for n in range(3):
            runs.append(project.submit("solo", f"k{n}").run_id)
            _until(lambda: len(published) == len(runs), f"submission {n} published", 5.0)
        assert published == [(run_id, "solo") for run_id in runs]
    finally:
        dispatcher.stop()
        dispatcher.runner.close()


def test_on_sqlite_every_dispatcher_acts(make_project: MakeProject) -> None:
    project = _solo(make_project)
    out_a: list[tuple[int, str]] = []
    out_b: list[tuple[int, str]] = []
    a, b = _dispatcher(project, out_a, "celery:q"), _dispatcher(project, out_b, "celery:q")
    try:
        project.submit("solo", "k1")
        assert a.tick() == 1 and a.leading
        project.submit("solo", "k2")
        assert b.tick() == 1 and b.leading
    finally:
        for d in (a, b):
            d.stop()
            d.runner.close()
