"""Provenance from recorded rows: why a task ran, why one did not, and the tasks around one.

:func:`why` walks the recorded trigger edges upstream from a task: each task, the run that
succeeded (and emitted the edge that was followed), its steps and output, and when each
trigger fired. :func:`why_not` explains the negative space: for every trigger an agent
subscribes to, whether it fired for the key, and if not, what became of the upstream task
(failed, still retrying, never submitted...), recursively up the graph to the root causes.
:func:`task_graph` collects a task's upstream and downstream tasks.

Everything here reads the store; nothing is reconstructed from logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tether.store import Run, RunStatus, Task, Trigger
from tether.store.reads import StoreReads

EDGE_LIMIT = 10_000
"""At most this many recorded edges are followed by one query (a huge fan-in is cut)."""


def when(ts: float | None) -> str:
    """A local, second-precision time for explanations, or ``-``."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def task_dict(task: Task) -> dict[str, Any]:
    """A task's JSON form, with its ``ref``."""
    return {**task.to_dict(), "ref": task.ref}


def _run_dict(run: Run | None) -> dict[str, Any] | None:
    return None if run is None else run.to_dict()


# -- why -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CauseEdge:
    """A recorded trigger into a task, and the upstream task whose run emitted it."""

    trigger: Trigger
    upstream: Cause

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the trigger, then the upstream task's chain."""
        t = self.trigger
        return {
            "trigger": t.name,
            "trigger_id": t.id,
            "fired_at": t.created_at,
            "upstream_task": t.upstream_ref,
            "upstream_run_id": t.upstream_run_id,
            "upstream": self.upstream.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Cause:
    """One task of a causal chain: the run that produced its output, and the edges into it.

    ``run`` is the run that emitted the edge followed to reach this task (for the task
    asked about: its latest succeeded run, or the run asked for); None when it has none.
    """

    task: Task
    run: Run | None
    triggered_by: tuple[CauseEdge, ...] = ()
    note: str | None = None

    @property
    def depth(self) -> int:
        """Edges on the longest recorded path upstream of this task."""
        return max((1 + e.upstream.depth for e in self.triggered_by), default=0)

    def walk(self) -> Iterator[Cause]:
        """This task and every task upstream of it, depth first (shared ones repeat)."""
        yield self
        for edge in self.triggered_by:
            yield from edge.upstream.walk()

    def to_dict(self) -> dict[str, Any]:
        """JSON form: a tree whose children are the triggers that fired into the task."""
        return {
            "task": task_dict(self.task),
            "run": _run_dict(self.run),
            "note": self.note,
            "triggered_by": [e.to_dict() for e in self.triggered_by],
        }


@dataclass(frozen=True, slots=True)
class Why:
    """The answer to "why did this task do what it did?": its causal chain, as a tree."""

    root: Cause
    truncated: bool = False
    """True when the task had more upstream edges than one query follows."""

    @property
    def task(self) -> Task:
        """The task asked about."""
        return self.root.task

    @property
    def depth(self) -> int:
        """Edges on the longest recorded path upstream of the task."""
        return self.root.depth

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``tether why --json``)."""
        return {
            "task": self.task.ref,
            "depth": self.depth,
            "truncated": self.truncated,
            "chain": self.root.to_dict(),
        }


def _inputs_of(
    task_id: int, run: Run | None, edges_in: dict[int, list[Trigger]]
) -> list[Trigger]:
    """The edges that fed a run: per (trigger, upstream task), the latest one recorded
    before the run started (a later firing cannot have caused it)."""
    latest: dict[tuple[str, int], Trigger] = {}
    earliest: dict[tuple[str, int], Trigger] = {}
    cutoff = None if run is None else (run.started_at or run.created_at)
    for t in edges_in.get(task_id, []):
        group = (t.name, t.upstream_task_id)
        earliest.setdefault(group, t)
        if cutoff is None or t.created_at <= cutoff:
            latest[group] = t
    if not latest and cutoff is not None:
        # Every edge looks later than the run: clocks of different machines disagree.
        # The earliest firing of each is then the best evidence of what fed it.
        latest = earliest
    return sorted(latest.values(), key=lambda t: (t.name, t.id))


def why(store: StoreReads, ref: str | int, *, run_id: int | None = None) -> Why:
    """Why a task did what it did: the recorded trigger edges upstream of it, recursively.

    ``ref`` is a task id or ``AGENT/KEY``. The chain starts at the task's latest succeeded
    run (or ``run_id``); each upstream task shows the run that emitted the edge, with its
    steps and output. A task with no succeeded run still shows the triggers that fired for
    it (``note`` says so; :func:`why_not` explains the rest).

    Raises:
        NotFound: no such task, or ``run_id`` is not one of its runs.
    """
    from tether.errors import NotFound

    task = store.get_task(ref)
    if run_id is not None:
        run: Run | None = store.get_run(run_id)
        if run is not None and run.task_id != task.id:
            raise NotFound(f"run {run_id} is not a run of {task.ref}")
    else:
        run = store.last_run(task.id, status=RunStatus.SUCCEEDED)
    edges = store.upstream_edges(task.id, limit=EDGE_LIMIT)
    edges_in: dict[int, list[Trigger]] = {}
    for t in edges:
        edges_in.setdefault(t.downstream_task_id, []).append(t)
    runs = store.runs_by_ids({t.upstream_run_id for t in edges})
    tasks = store.tasks_by_ids({t.upstream_task_id for t in edges})
    tasks[task.id] = task

    done: dict[tuple[int, int | None], Cause] = {}

    def cause(task_id: int, r: Run | None, path: frozenset[int]) -> Cause:
        memo = (task_id, None if r is None else r.id)
        if memo in done:
            return done[memo]
        feeding = [] if task_id in path else _inputs_of(task_id, r, edges_in)
        inner = path | {task_id}
        node = Cause(
            task=tasks[task_id],
            run=r,
            triggered_by=tuple(
                CauseEdge(t, cause(t.upstream_task_id, runs.get(t.upstream_run_id), inner))
                for t in feeding
                if t.upstream_task_id in tasks
            ),
            note="the recorded edges loop back here" if task_id in path else None,
        )
        done[memo] = node
        return node

    root = cause(task.id, run, frozenset())
    if run is None:
        root = Cause(
            task=root.task,
            run=None,
            triggered_by=root.triggered_by,
            note=(
                f"{task.ref} has no succeeded run (status {task.status}); "
                f"`tether why-not {task.agent} {task.key}` explains why"
            ),
        )
    return Why(root=root, truncated=len(edges) >= EDGE_LIMIT)


# -- the tasks around one --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskGraph:
    """A task with every task upstream and downstream of it, and the edges between them."""

    focus: Task
    tasks: tuple[Task, ...]
    edges: tuple[Trigger, ...]
    upstream: frozenset[int]
    """Ids of the tasks upstream of the focus."""
    downstream: frozenset[int]
    """Ids of the tasks downstream of the focus."""
    truncated: bool = False

    def role(self, task_id: int) -> str:
        """``task`` (the focus), ``upstream`` or ``downstream``."""
        if task_id == self.focus.id:
            return "task"
        return "upstream" if task_id in self.upstream else "downstream"

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{task, nodes, edges}``."""
        return {
            "task": self.focus.ref,
            "truncated": self.truncated,
            "nodes": [{**task_dict(t), "role": self.role(t.id)} for t in self.tasks],
            "edges": [
                {"from": e.upstream_ref, "to": e.downstream_ref, **e.to_dict()}
                for e in self.edges
            ],
        }


def task_graph(store: StoreReads, ref: str | int, *, limit: int = EDGE_LIMIT) -> TaskGraph:
    """The tasks upstream and downstream of a task, from the recorded trigger rows.

    Raises:
        NotFound: no such task.
    """
    focus = store.get_task(ref)
    up = store.upstream_edges(focus.id, limit=limit)
    down = store.downstream_edges(focus.id, limit=limit)
    edges = {e.id: e for e in (*up, *down)}
    up_ids = frozenset(e.upstream_task_id for e in up) - {focus.id}
    down_ids = frozenset(e.downstream_task_id for e in down) - {focus.id}
    found = store.tasks_by_ids(up_ids | down_ids)
    found[focus.id] = focus
    return TaskGraph(
        focus=focus,
        tasks=tuple(found[i] for i in sorted(found)),
        edges=tuple(edges[i] for i in sorted(edges)),
        upstream=up_ids,
        downstream=down_ids,
        truncated=len(up) >= limit or len(down) >= limit,
    )
