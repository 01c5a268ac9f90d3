"""``tether verify``: recompute every task's hash chain and report what was tampered with."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, select

from tether.store.ledger import FIELDS, GENESIS, chain, digest, ref_of
from tether.store.schema import ledger, operator_actions, runs, steps, task_inputs, tasks
from tether.store.schema_review import reviews

_BATCH = 500


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing found wrong in one task's chain."""

    task_id: int
    task: str
    seq: int | None
    """The ledger entry where the chain breaks (None: a record with no entry)."""
    ref: str
    kind: str
    """``changed``, ``removed``, ``unrecorded`` (a record with no ledger entry) or
    ``ledger`` (an entry itself was edited, removed or reordered)."""
    detail: str


@dataclass(frozen=True, slots=True)
class Report:
    """What ``verify`` checked and found."""

    tasks: int
    entries: int
    problems: tuple[Problem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when every chain is intact."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tasks": self.tasks,
            "entries": self.entries,
            "problems": [asdict(p) for p in self.problems],
        }


def _records(conn: Connection, task_ids: list[int]) -> dict[int, dict[str, dict[str, Any]]]:
    """Every final record of these tasks, by task and ledger ref."""
    found: dict[int, dict[str, dict[str, Any]]] = {task_id: {} for task_id in task_ids}
    queries = {
        "input": select(task_inputs).where(task_inputs.c.task_id.in_(task_ids)),
        "run": select(runs).where(
            runs.c.task_id.in_(task_ids), runs.c.status.not_in(("queued", "running"))
        ),
        "step": select(steps, runs.c.task_id.label("owner"))
        .join(runs, runs.c.id == steps.c.run_id)
        .where(runs.c.task_id.in_(task_ids), steps.c.status != "running"),
        "action": select(operator_actions).where(operator_actions.c.task_id.in_(task_ids)),
        "review": select(reviews).where(reviews.c.task_id.in_(task_ids)),
    }
    for kind, q in queries.items():
        for row in conn.execute(q):
            record = dict(row._mapping)
            owner = record.pop("owner", None) or record["task_id"]
            found[owner][ref_of(kind, record)] = record
    return found


def _task_batches(conn: Connection) -> Iterator[list[tuple[int, str]]]:
    last = 0
    while True:
        rows = conn.execute(
            select(tasks.c.id, tasks.c.agent, tasks.c.key)
            .where(tasks.c.id > last)
            .order_by(tasks.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        yield [(r.id, f"{r.agent}/{r.key}") for r in rows]
        last = rows[-1].id


def verify(engine: Engine, *, progress: Callable[[int], None] | None = None) -> Report:
    """Check every task's chain; report the first changed, removed or unrecorded record
    of each task whose chain is broken."""
    problems: list[Problem] = []
    n_tasks = n_entries = 0
    with engine.connect() as conn:
        for batch in _task_batches(conn):
            ids = [task_id for task_id, _ in batch]
            records = _records(conn, ids)
            entries: dict[int, list[Any]] = {task_id: [] for task_id in ids}
            for e in conn.execute(
                select(ledger).where(ledger.c.task_id.in_(ids)).order_by(ledger.c.task_id,
                                                                          ledger.c.seq)
            ):
                entries[e.task_id].append(e)
            for task_id, name in batch:
                n_entries += len(entries[task_id])
                problem = _check(task_id, name, entries[task_id], records[task_id])
                if problem is not None:
                    problems.append(problem)
            n_tasks += len(batch)
            if progress is not None:
                progress(len(batch))
    return Report(tasks=n_tasks, entries=n_entries, problems=tuple(problems))


def _check(
    task_id: int, name: str, entries: list[Any], records: dict[str, dict[str, Any]]
) -> Problem | None:
    prev = GENESIS
    seen: set[str] = set()
    for expected_seq, e in enumerate(entries, start=1):
        if e.seq != expected_seq:
            return Problem(task_id, name, expected_seq, e.ref, "ledger",
                           f"ledger entry {expected_seq} is missing")
        if e.prev_hash != prev or e.hash != chain(prev, e.kind, e.ref, e.digest):
            return Problem(task_id, name, e.seq, e.ref, "ledger",
                           f"ledger entry {e.seq} was altered: its hash does not follow the chain")
        record = records.get(e.ref)
        if record is None:
            return Problem(task_id, name, e.seq, e.ref, "removed",
                           f"{e.ref} was recorded but is no longer in the store")
        if digest(e.kind, record) != e.digest:
            return Problem(task_id, name, e.seq, e.ref, "changed",
                           f"{e.ref} was changed after it was recorded "
                           f"(fields: {', '.join(FIELDS[e.kind])})")
        seen.add(e.ref)
        prev = e.hash
    for ref in records:
        if ref not in seen:
            return Problem(task_id, name, None, ref, "unrecorded",
                           f"{ref} is in the store but not in the task's ledger (added "
                           "afterwards, or the ledger's tail was cut)")
    return None
