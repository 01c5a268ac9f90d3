"""Moving a project's history from the SQLite default to PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import tether
from tether import Context, Project, WorkerStats
from tether.store import Store
from tether.store.copy import copy_store
from tether.store.verify import verify

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]


def test_copy_sqlite_to_postgresql_keeps_everything_and_work_continues(
    sqlite_url: str, pg_url: str, make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(emits="a.done")
    def a(ctx: Context) -> dict[str, Any]:
        with ctx.step("read", input=ctx.input) as s:
            s.output = {"n": len(ctx.history)}
        return {"ok": True}

    @tether.agent(subscribes="a.done")
    def b(ctx: Context) -> dict[str, Any]:
        return {"seen": ctx.upstream["a.done"]}

    old = make_project([a, b], database_url=sqlite_url)
    for i in range(5):
        old.submit("a", f"k{i}", {"i": i})
    run_idle(old)
    old.store.cancel_task("b/k0", note="test", actor="ops")

    target = Store.open(pg_url)
    counts = copy_store(old.store, target)
    assert counts["tasks"] == 10 and counts["runs"] == 10 and counts["triggers"] == 5
    assert verify(target.engine).ok
    assert target.get_task("b/k3").to_dict() == old.store.get_task("b/k3").to_dict()
    assert target.runs_of(1) == old.store.runs_of(1)
    with pytest.raises(tether.Conflict, match="not empty"):
        copy_store(old.store, target)
    target.close()

    # The team carries on on PostgreSQL: new ids follow the copied ones.
    new = make_project([a, b], database_url=pg_url)
    sub = new.submit("a", "k9", {"i": 9})
    assert sub.task_id == 11
    run_idle(new)
    assert new.store.get_task("b/k9").status == tether.TaskStatus.SUCCEEDED
    assert verify(new.store.engine).ok
