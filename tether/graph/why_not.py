"""Why a task did not run (or has not yet): the negative space, from recorded rows.

For every trigger an agent subscribes to: did it fire for the task's key? If not, what
became of the upstream task that would emit it: it failed (class and reason), is still
queued, running or retrying, succeeded without emitting it, or was never submitted. The
walk goes up the graph until it reaches the root causes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tether.graph.agent import Agent
from tether.graph.provenance import when
from tether.graph.registry import Graph
from tether.store import Run, RunStatus, Task, TaskStatus, Trigger
from tether.store.reads import StoreReads

NEVER_SUBMITTED = "never submitted"
"""State of a root agent's task that does not exist."""
NOT_CREATED = "not created"
"""State of a subscribing agent's task that no trigger (and no submission) created."""
CANNOT_INFER = "cannot infer"
"""State of a trigger whose upstream task cannot be inferred (a custom key function)."""
NO_EMITTER = "no emitter"
"""State of a trigger that no agent declares it emits."""
NOT_EMITTED = "did not emit"
"""State of an upstream task that succeeded without emitting the trigger needed."""


def _status(name: str) -> str | None:
    """The value of ``TaskStatus.<name>``, or None if the enum has no such member."""
    member = getattr(TaskStatus, name, None)
    return None if member is None else str(member.value)


_PHRASES = {
    "PENDING": "exists but has not run yet",
    "QUEUED": "is queued and has not started yet",
    "RUNNING": "is running now",
    "RETRYING": "is retrying after a retryable failure",
    "WAITING": "did its part and waits for new information",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "CANCELLED": "was cancelled: no further runs",
}
STATUS_PHRASES: dict[str, str] = {
    str(m.value): _PHRASES.get(m.name, f"is {m.value}") for m in TaskStatus
}
"""How each task status reads in an explanation; a status not listed reads as ``is STATUS``."""

_FROM_RUNS = {
    v
    for v in map(_status, ("PENDING", "QUEUED", "RUNNING", "RETRYING", "WAITING", "SUCCEEDED",
                           "FAILED"))
    if v is not None
}
"""Statuses that the task's runs explain by themselves; any other (``cancelled``, or one added
later) is explained by its status first."""


def status_phrase(status: str) -> str:
    """An explanation's words for a task status (never fails on a status it does not know)."""
    return STATUS_PHRASES.get(str(status), f"is {status}")


@dataclass(frozen=True, slots=True)
class RootCause:
    """Where an explanation bottoms out: the task (or trigger) that stopped the work."""

    task: str
    """``AGENT/KEY`` of the task concerned."""
    state: str
    """A task status, or one of ``never submitted``, ``not created``, ``did not emit``,
    ``cannot infer``, ``no emitter``."""
    reason: str
    """The failure reason, or what is missing, in a few words."""
    summary: str
    """One sentence for people: ``kyc/c2 failed terminally: sanctions match (run 7)``."""
    task_id: int | None = None
    run_id: int | None = None
    failure_class: str | None = None
    trigger: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "task": self.task,
            "task_id": self.task_id,
            "state": self.state,
            "run_id": self.run_id,
            "failure_class": self.failure_class,
            "reason": self.reason,
            "trigger": self.trigger,
            "summary": self.summary,
        }


@dataclass(frozen=True, slots=True)
class TriggerCheck:
    """One subscribed trigger of a task: did it fire for the task's key, and if not, why."""

    name: str
    fired: bool
    edges: tuple[Trigger, ...] = ()
    """The recorded firings (when it fired)."""
    upstream: tuple[Explanation, ...] = ()
    """When it did not fire: the upstream tasks that would emit it, each explained."""
    note: str = ""
    causes: tuple[RootCause, ...] = ()
    """When it did not fire: the root causes (of the upstream tasks, or of the trigger)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "trigger": self.name,
            "fired": self.fired,
            "edges": [e.to_dict() for e in self.edges],
            "note": self.note,
            "upstream": [u.to_dict() for u in self.upstream],
            "root_causes": [c.to_dict() for c in self.causes],
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why one task (agent, key) is where it is; ``triggers`` recurse up the graph."""

    agent: str
    key: str
    task: Task | None
    state: str
    summary: str
    runs: tuple[Run, ...] = ()
    """The task's runs, oldest first (without steps)."""
    triggers: tuple[TriggerCheck, ...] = ()
    causes: tuple[RootCause, ...] = ()
    """The root causes below this task (itself, when it is where the work stopped)."""

    @property
    def ref(self) -> str:
        """``AGENT/KEY``."""
        return f"{self.agent}/{self.key}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form: a tree through the triggers' upstream explanations."""
        return {
            "task": self.ref,
            "task_id": None if self.task is None else self.task.id,
            "agent": self.agent,
            "key": self.key,
            "state": self.state,
            "summary": self.summary,
            "runs": [
                {k: v for k, v in r.to_dict().items() if k != "steps"} for r in self.runs
            ],
            "triggers": [t.to_dict() for t in self.triggers],
            "root_causes": [c.to_dict() for c in self.causes],
        }


@dataclass(frozen=True, slots=True)
class WhyNot:
    """The answer to "why did this task not run (yet)?"."""

    target: Explanation
    ran: bool
    """True when the task has a succeeded run: it did run (see :func:`why`)."""
    root_causes: tuple[RootCause, ...] = field(default=())

    @property
    def summary(self) -> str:
        """One line: the task's state, or its root causes."""
        if self.ran or not self.root_causes:
            return self.target.summary
        return "; ".join(c.summary for c in self.root_causes)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``tether why-not --json``)."""
        return {
            "task": self.target.ref,
            "ran": self.ran,
            "summary": self.summary,
            "root_causes": [c.to_dict() for c in self.root_causes],
            "explanation": self.target.to_dict(),
        }


def _unique(causes: Iterable[RootCause]) -> tuple[RootCause, ...]:
    seen: dict[tuple[str, str, str, str | None], RootCause] = {}
    for c in causes:
        seen.setdefault((c.task, c.state, c.reason, c.trigger), c)
    return tuple(seen.values())


def _attempts(run: Run) -> str:
    return f"run {run.id}, attempt {run.attempt}"


class _Explainer:
    """One :func:`why_not` query: explanations are memoised, so a diamond is read once."""

    def __init__(self, store: StoreReads, graph: Graph) -> None:
        self.store = store
        self.graph = graph
        self.memo: dict[tuple[str, str, str | None, str | None], Explanation] = {}

    def explain(
        self,
        agent: Agent,
        key: str,
        *,
        needed: str | None = None,
        wanted_by: str | None = None,
        path: frozenset[tuple[str, str]] = frozenset(),
    ) -> Explanation:
        """Why task (agent, key) is where it is. ``needed``: the trigger that the downstream
        task ``wanted_by`` (``AGENT/KEY``) waits for from it; None for the task asked about."""
        memo = (agent.name, key, needed, wanted_by)
        if memo not in self.memo:
            self.memo[memo] = self._explain(
                agent, key, needed, wanted_by, path | {(agent.name, key)}
            )
        return self.memo[memo]

    def _explain(
        self,
        agent: Agent,
        key: str,
        needed: str | None,
        wanted_by: str | None,
        path: frozenset[tuple[str, str]],
    ) -> Explanation:
        ref = f"{agent.name}/{key}"
        task = self.store.find_task(agent.name, key)
        if task is None:
            if not agent.subscribes:
                cause = RootCause(
                    task=ref,
                    state=NEVER_SUBMITTED,
                    reason="never submitted",
                    summary=f"{ref} was never submitted ({agent.name} is a root agent: "
                    f"`tether submit {agent.name} {key}` starts it)",
                )
                return Explanation(agent.name, key, None, NEVER_SUBMITTED, cause.summary,
                                   causes=(cause,))
            checks = self._checks(agent, key, None, path)
            missing = [c.name for c in checks if not c.fired]
            summary = f"{ref} was never created: " + (
                f"no trigger it needs ({', '.join(missing)}) fired for key {key}"
                if len(missing) == len(checks)
                else f"{', '.join(missing)} did not fire for key {key}"
            )
            return Explanation(agent.name, key, None, NOT_CREATED, summary, triggers=checks,
                               causes=_unique(c for ch in checks for c in ch.causes))
        runs = tuple(self.store.runs_of(task.id, with_steps=False))
        if str(task.status) not in _FROM_RUNS:
            return self._stopped(agent, key, task, runs, needed is None, path)
        if not runs:
            return self._not_started(agent, key, task, path)
        if runs[-1].status == RunStatus.SUCCEEDED:
            return self._ran(agent, key, task, runs, needed, wanted_by, path)
        return self._stopped(agent, key, task, runs, needed is None, path)

    def _not_started(
        self, agent: Agent, key: str, task: Task, path: frozenset[tuple[str, str]]
    ) -> Explanation:
        """A task that exists without a run: a join waiting for its triggers."""
        ref = task.ref
        checks = self._checks(agent, key, task, path)
        missing = [c.name for c in checks if not c.fired]
        fired = [c.name for c in checks if c.fired]
        if missing:
            summary = f"{ref} has not run: it waits for {', '.join(missing)}"
            if fired:
                summary += f" ({', '.join(fired)} fired)"
            causes = _unique(c for ch in checks for c in ch.causes)
        else:
            what = "every trigger it needs fired" if checks else "it was created"
            summary = f"{ref} has not run: {what}, but no run was queued"
            causes = (RootCause(task=ref, task_id=task.id, state=str(task.status),
                                reason="no run was queued", summary=summary),)
        return Explanation(agent.name, key, task, str(task.status), summary, triggers=checks,
                           causes=causes)

    def _ran(
        self,
        agent: Agent,
        key: str,
        task: Task,
        runs: tuple[Run, ...],
        needed: str | None,
        wanted_by: str | None,
        path: frozenset[tuple[str, str]],
    ) -> Explanation:
        """A task whose latest run succeeded: for the task asked about, it ran; for an
        upstream task, it did not emit the trigger needed (to the task that needs it)."""
        ref = task.ref
        last = next(r for r in reversed(runs) if r.status == RunStatus.SUCCEEDED)
        if needed is None:
            summary = (
                f"{ref} ran: run {last.id} succeeded at {when(last.finished_at)}; "
                f"`tether why {ref}` shows why"
            )
            if str(task.status) != _status("SUCCEEDED"):
                summary = (
                    f"{ref} ran: run {last.id} succeeded at {when(last.finished_at)} and it "
                    f"{status_phrase(task.status)}; `tether why {ref}` shows why"
                )
            checks = self._checks(agent, key, task, path, recurse=False)
            return Explanation(agent.name, key, task, str(task.status), summary, runs=runs,
                               triggers=checks)
        out = self.store.triggers_out(task.id)
        emitted = sorted({t.name for t in out})
        down_agent = (wanted_by or "").split("/", 1)[0]
        same = sorted({t.downstream_ref for t in out
                       if t.name == needed and t.downstream_ref.startswith(f"{down_agent}/")})
        if needed in emitted:
            went = ", ".join(same) or ", ".join(
                sorted({t.downstream_ref for t in out if t.name == needed})
            )
            summary = (
                f"{ref} succeeded (run {last.id}) and emitted {needed} to {went}, but not to "
                f"{wanted_by}"
            )
            if not same:
                summary += f" (did {down_agent} subscribe to {needed} only after that run?)"
        else:
            summary = (
                f"{ref} succeeded (run {last.id}) but did not emit {needed}; it emitted "
                + (", ".join(emitted) if emitted else "no trigger")
            )
        cause = RootCause(task=ref, task_id=task.id, state=NOT_EMITTED, run_id=last.id,
                          reason=f"succeeded without emitting {needed}", summary=summary,
                          trigger=needed)
        return Explanation(agent.name, key, task, str(task.status), summary, runs=runs,
                           causes=(cause,))

    def _stopped(
        self,
        agent: Agent,
        key: str,
        task: Task,
        runs: tuple[Run, ...],
        target: bool,
        path: frozenset[tuple[str, str]],
    ) -> Explanation:
        """A task with no success to show: failed, in flight, or stopped by an operator."""
        ref, status = task.ref, str(task.status)
        last = runs[-1] if runs else None
        failures = [r for r in runs if r.status == RunStatus.FAILED]
        failed = failures[-1] if failures else None
        culprit = last
        if status not in _FROM_RUNS or last is None:  # cancelled, or a status added later
            reason, summary = self._operator_stop(task, last)
        elif last.status == RunStatus.FAILED:
            reason = last.failure_reason or "no reason recorded"
            if str(last.failure_class) == "terminal":
                summary = f"{ref} failed terminally: {reason} ({_attempts(last)})"
            else:
                summary = (
                    f"{ref} failed after {last.attempt} attempt(s), the last "
                    f"{last.failure_class or 'unclassified'}: {reason} (run {last.id})"
                )
        elif last.status == RunStatus.RUNNING:
            reason = "still running"
            summary = f"{ref} is running: {_attempts(last)} started at {when(last.started_at)}"
        elif last.status == RunStatus.QUEUED and status == _status("RETRYING") and failed:
            culprit = failed
            reason = f"still retrying after: {failed.failure_reason}"
            summary = (
                f"{ref} is retrying: attempt {last.attempt} (run {last.id}) is due at "
                f"{when(last.available_at)}, after run {failed.id} failed "
                f"({failed.failure_class}): {failed.failure_reason}"
            )
        elif last.status == RunStatus.QUEUED:
            reason = "still queued"
            summary = f"{ref} is queued: {_attempts(last)} ({last.reason}) has not started yet"
            if last.note:
                summary += f"; note: {last.note}"
            if failed is not None:
                summary += f"; before it, run {failed.id} failed: {failed.failure_reason}"
        else:
            reason = status_phrase(status)
            summary = f"{ref} {reason} (latest: {_attempts(last)}, {last.status})"
        cause = RootCause(
            task=ref,
            task_id=task.id,
            state=status,
            reason=reason,
            summary=summary,
            run_id=None if culprit is None else culprit.id,
            failure_class=(
                None if culprit is None or culprit.failure_class is None
                else str(culprit.failure_class)
            ),
        )
        checks = self._checks(agent, key, task, path, recurse=False) if target else ()
        return Explanation(agent.name, key, task, status, summary, runs=runs, triggers=checks,
                           causes=(cause,))

    def _operator_stop(self, task: Task, last: Run | None) -> tuple[str, str]:
        """``(reason, summary)`` for a status the runs do not explain (``cancelled``):
        the operator action that set it, when one is recorded."""
        status = str(task.status)
        reason = status_phrase(status)
        summary = f"{task.ref} {reason}"
        stops = [a for a in self.store.actions(task.id) if a.action != "retry"]
        if stops:
            act = stops[-1]
            summary = f"{task.ref} was {status} by {act.actor} at {when(act.created_at)}"
            reason = f"{status} by {act.actor}"
            if act.note:
                summary += f": {act.note}"
                reason += f": {act.note}"
        if last is not None:
            summary += f" (latest: {_attempts(last)}, {last.status})"
        return reason, summary

    def _checks(
        self,
        agent: Agent,
        key: str,
        task: Task | None,
        path: frozenset[tuple[str, str]],
        *,
        recurse: bool = True,
    ) -> tuple[TriggerCheck, ...]:
        fired: dict[str, list[Trigger]] = {}
        if task is not None and agent.subscribes:
            for t in self.store.triggers_in(task.id):
                fired.setdefault(t.name, []).append(t)
        checks = []
        for name in agent.subscribes:
            edges = fired.get(name, [])
            if edges:
                e = edges[-1]
                note = f"fired from {e.upstream_ref} (run {e.upstream_run_id}) at " + when(
                    e.created_at
                )
                checks.append(TriggerCheck(name, True, tuple(edges), note=note))
            elif recurse:
                checks.append(self._unfired(agent, key, name, path))
            else:
                checks.append(TriggerCheck(
                    name, False, note=f"did not fire: {agent.name}/{key} was started without it"
                ))
        return tuple(checks)

    def _unfired(
        self, agent: Agent, key: str, name: str, path: frozenset[tuple[str, str]]
    ) -> TriggerCheck:
        ref = f"{agent.name}/{key}"
        emitters = self.graph.emitters(name) or [a for a in self.graph if a.dynamic]
        if not emitters:
            summary = f"{name} has no emitter: no agent declares that it emits it"
            cause = RootCause(task=ref, state=NO_EMITTER, reason=summary, summary=summary,
                              trigger=name)
            return TriggerCheck(name, False, note=f"did not fire: {summary}", causes=(cause,))
        if agent.key is not None:
            candidates = tuple(
                self.explain(e, key, needed=name, wanted_by=ref, path=path)
                for e in emitters
                if (e.name, key) not in path and self.store.find_task(e.name, key) is not None
            )
            summary = (
                f"{agent.name} computes its task keys with a key function, so the upstream "
                f"task whose {name} would create {ref} cannot be inferred"
            )
            if candidates:
                summary += "; tasks with the same key that emit it: " + ", ".join(
                    c.ref for c in candidates
                )
            cause = RootCause(task=ref, state=CANNOT_INFER, reason="custom key function",
                              summary=summary, trigger=name)
            return TriggerCheck(name, False, upstream=candidates, note=f"did not fire: {summary}",
                                causes=(cause,))
        upstream = tuple(
            self.explain(e, key, needed=name, wanted_by=ref, path=path)
            for e in emitters
            if (e.name, key) not in path
        )
        note = f"did not fire for key {key}"
        return TriggerCheck(name, False, upstream=upstream, note=note,
                            causes=_unique(c for u in upstream for c in u.causes))


def why_not(store: StoreReads, graph: Graph, agent: str, key: str) -> WhyNot:
    """Why task (agent, key) did not run, or has not yet: for each trigger the agent
    subscribes to, whether it fired for the key and, if not, what became of the upstream
    task, recursively up the graph to the root causes.

    The upstream task of a trigger is found by the default key convention (the upstream
    task has the same key); an agent with a ``key`` function says that it cannot be
    inferred, listing the same-key candidates there are.

    Raises:
        DiscoveryError: no agent of that name in the graph.
    """
    target = _Explainer(store, graph).explain(graph[agent], key)
    ran = any(r.status == RunStatus.SUCCEEDED for r in target.runs)
    return WhyNot(target=target, ran=ran, root_causes=target.causes)
