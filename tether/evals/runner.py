"""Running an agent over a dataset, through the harness.

Each case becomes a task of the agent keyed ``eval:<experiment id>:<case key>`` (the
experiment namespace) with the case's input, and each execution a run (reason ``eval``)
with its steps, recorded by the same store calls the worker uses: the run's outcome, its
steps, its ledger entries and the case's result are written in one transaction. Runs of
experiment tasks never emit triggers (:data:`tether.runtime.execute.EVAL_KEY_PREFIX`).

The runner is its own small worker: it creates runs already claimed by itself (so a
production worker of the same agent never takes them), executes up to ``concurrency`` at
once on threads (coroutine agents share one event loop), and commits finished runs and
new claims in one transaction per batch. Retries follow the agent's policy.

Resuming: a case with a recorded result is never run again. Run the same experiment
(same name) again after an interruption and only the unfinished cases run.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, select, update

from tether.evals.experiments import (
    ExperimentError,
    done_keys,
    finish_experiment,
    insert_results,
    open_experiment,
    unrecorded_final_runs,
)
from tether.evals.experiments import results as results_of
from tether.evals.models import Dataset, Experiment, Result
from tether.graph.agent import Agent
from tether.graph.registry import Graph
from tether.runtime.context import StepRecorder
from tether.runtime.execute import EVAL_KEY_PREFIX, Executor
from tether.runtime.worker import default_worker_id
from tether.store import Completion, Store
from tether.store.schema import runs, task_inputs, tasks
from tether.store.writes import Claim

Progress = Callable[[int, int], None]
"""``(cases done, cases in all)``, called as cases finish."""

_MISSING: Any = object()


def task_key(experiment_id: int, case_key: str) -> str:
    """The task key of a case in an experiment's namespace."""
    return f"{EVAL_KEY_PREFIX}{experiment_id}:{case_key}"


def case_key_of(experiment_id: int, key: str) -> str:
    """The case key back from an experiment task's key."""
    return key[len(task_key(experiment_id, "")) :]


def decision_spec(agent: Agent) -> str:
    """How the decision is read, as recorded in the experiment's settings."""
    d = agent.decision
    if d is None:
        return "field:decision"
    if isinstance(d, str):
        return f"field:{d}"
    return f"function:{getattr(d, '__module__', '?')}.{getattr(d, '__qualname__', repr(d))}"


def extract_decision(agent: Agent, output: Any) -> tuple[Any, str | None]:
    """(decision, error): the output's ``decision`` field, the field the agent declares, or
    what its decision function returns. A plain (non-object) output is the decision."""
    d = agent.decision
    if callable(d):
        try:
            return d(output), None
        except Exception as exc:
            return None, f"decision function failed: {type(exc).__name__}: {exc}"
    name = d or "decision"
    if isinstance(output, dict):
        if name in output:
            return output[name], None
        return None, (
            f"output has no {name!r} field; return it, or declare where the decision is "
            "with @tether.agent(decision=...)"
        )
    if d is None:
        return output, None
    return None, f"output is not an object with a {name!r} field"


def _cost(output: Any, cost_field: str) -> float | None:
    value = output.get(cost_field) if isinstance(output, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass
class RunStats:
    """What an experiment run did."""

    experiment: Experiment
    total: int
    already_done: int = 0
    ran: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    reruns: int = 0
    interrupted: bool = False
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0

    @property
    def seconds(self) -> float:
        """Wall-clock time of this invocation."""
        return (self.finished_at or time.time()) - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "experiment": self.experiment.name,
            "experiment_id": self.experiment.id,
            "cases": self.total,
            "already_done": self.already_done,
            "ran": self.ran,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "retries": self.retries,
            "reruns": self.reruns,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
        }


class ExperimentRunner:
    """Runs one experiment (or its disagreement re-runs) to completion; see the module doc.

    Args:
        store: the project's store.
        graph: the project's agents.
        experiment: the experiment (see :func:`start`).
        dataset: its dataset version.
        concurrency: runs in flight at once.
        lease_seconds: the runner's lease on its runs, renewed while they run.
        progress: called with (done, total) as cases finish.
        stop: set it to stop claiming new cases; runs in flight finish and are recorded.
    """

    def __init__(
        self,
        store: Store,
        graph: Graph,
        experiment: Experiment,
        dataset: Dataset,
        *,
        concurrency: int = 64,
        lease_seconds: float = 60.0,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if concurrency < 1:
            raise ExperimentError("--concurrency must be at least 1")
        if experiment.agent not in graph.agents:
            known = ", ".join(sorted(graph.agents)) or "none found"
            raise ExperimentError(f"no agent named {experiment.agent!r} (agents: {known})")
        self.store = store
        self.graph = graph
        self.experiment = experiment
        self.agent = graph.agents[experiment.agent]
        self.dataset = dataset
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.progress = progress
        self.stop = stop or threading.Event()
        self.worker = f"eval:{default_worker_id()}"
        self.cost_field = str(experiment.settings.get("cost_field", "cost"))
        self._executor = Executor(store, graph)
        self._done: queue.Queue[Completion] = queue.Queue()
        self._wake = threading.Event()
        self._inflight: dict[int, float] = {}  # run id -> started
        self._keys: dict[int, str] = {}  # task id -> case key
        self._task_kind: dict[int, str] = {}  # task id -> kind of its latest run here
        self._kind_of: dict[int, str] = {}  # run id -> first | rerun

    # -- public --------------------------------------------------------------------

    def run(
        self,
        keys: Iterable[str] | None = None,
        *,
        kind: str = "first",
        rerun_if: Callable[[Result], bool] | None = None,
    ) -> RunStats:
        """Run the cases ``keys`` (default: every case of the dataset) that have no result
        of this ``kind`` yet. ``kind="rerun"`` runs each case's task once more (a new run
        of the same task), for disagreement triage; with ``rerun_if``, a case whose first
        result it accepts is re-run at once, ahead of the cases not yet started."""
        wanted = [c.key for c in self.dataset.cases] if keys is None else list(keys)
        exp = self.experiment
        stats = RunStats(experiment=exp, total=len(wanted))
        if kind == "first":
            self._sweep(stats)
        done = done_keys(self.store, exp.id, kind)
        todo = [k for k in wanted if k not in done]
        stats.already_done = len(wanted) - len(todo)
        finished = stats.already_done
        self._report(finished, stats.total)
        # Runs of this agent whose runner died: fail them as lost and queue their retries.
        self.store.reap(self._executor.retry_at, agents={exp.agent})
        waiting: set[int] = set()  # tasks with a retry (or an orphan run) still to come
        pool = _Pool(self.concurrency)
        next_renew = time.time() + self.lease_seconds / 3
        next_check = 0.0
        jobs: deque[tuple[str, str]] = deque((k, kind) for k in todo)
        if rerun_if is not None and kind == "first":
            redo = done - done_keys(self.store, exp.id, "rerun")
            for r in results_of(self.store, exp.id):
                if r.case_key in redo and rerun_if(r):
                    jobs.appendleft((r.case_key, "rerun"))
        try:
            while True:
                completions = self._drain()
                stopping = self.stop.is_set()
                if rerun_if is not None:
                    # Front-loaded: a disagreeing case is re-run in the very next free slot,
                    # before any case not yet started (the world has had least time to move).
                    for c in completions:
                        if (
                            self._kind_of.get(c.run_id) == "first"
                            and (c.succeeded or c.retry_at is None)
                            and rerun_if(self._result(c, "first"))
                        ):
                            jobs.appendleft((self._keys[c.task_id], "rerun"))
                free = 0 if stopping else self.concurrency - len(self._inflight) + len(completions)
                batch: list[tuple[str, str]] = []
                while jobs and len(batch) < free:
                    batch.append(jobs.popleft())
                now = time.time()
                want_waiting = bool(waiting) and free > len(batch) and now >= next_check
                if completions or batch or want_waiting:
                    recorded, claims, retrying, orphans = self.store._transact(
                        functools.partial(
                            self._exchange,
                            completions=completions,
                            batch=batch,
                            waiting=set(waiting) if want_waiting else set(),
                            spare=free - len(batch),
                        )
                    )
                    if want_waiting:
                        next_check = now + 0.05
                    for c in completions:
                        self._inflight.pop(c.run_id, None)
                        if c.retry_at is None:
                            self._kind_of.pop(c.run_id, None)
                    waiting |= retrying
                    waiting |= orphans
                    stats.retries += len(retrying)
                    for r in recorded:
                        waiting.discard(r.task_id)
                        if r.kind == "rerun" and kind == "first":
                            stats.reruns += 1
                            continue
                        stats.ran += 1
                        finished += 1
                        if r.error is None:
                            stats.succeeded += 1
                        else:
                            stats.failed += 1
                    if recorded:
                        self._report(finished, stats.total)
                    for claim in claims:
                        waiting.discard(claim.task_id)
                        self._inflight[claim.run_id] = time.time()
                        pool.submit(self._execute, claim)
                if time.time() >= next_renew and self._inflight:
                    self.store.renew(
                        self.worker, list(self._inflight), lease_seconds=self.lease_seconds
                    )
                    next_renew = time.time() + self.lease_seconds / 3
                if not self._inflight and self._done.empty():
                    if stopping or (not jobs and not waiting):
                        break
                    if not jobs and waiting and kind == "first":
                        # A retry another process took: record what it finished.
                        before = stats.ran
                        self._sweep(stats, waiting)
                        finished += stats.ran - before
                if completions or batch:
                    continue
                self._wake.wait(0.05 if waiting else 0.5)
                self._wake.clear()
        except BaseException:
            stats.interrupted = True
            self._release()
            raise
        finally:
            pool.shutdown()
            self._executor.close()
            stats.finished_at = time.time()
        stats.interrupted = stopping and finished < stats.total
        if kind == "first" and not stats.interrupted and finished >= stats.total:
            finish_experiment(self.store, exp.id)
        return stats

    # -- one transaction per batch ---------------------------------------------------

    def _exchange(
        self,
        conn: Connection,
        completions: list[Completion],
        batch: list[tuple[str, str]],
        waiting: set[int],
        spare: int,
    ) -> tuple[list[Result], list[Claim], set[int], set[int]]:
        """Record finished runs and their results, create and claim runs for new cases, and
        claim due retries of waiting tasks."""
        accepted = set(self.store._complete(conn, completions)) if completions else set()
        results: list[Result] = []
        retrying: set[int] = set()
        for c in completions:
            if c.run_id not in accepted:
                continue
            if not c.succeeded and c.retry_at is not None:
                retrying.add(c.task_id)
                continue
            results.append(self._result(c, self._kind_of.get(c.run_id, "first")))
        insert_results(conn, self.experiment.id, results)
        claims: list[Claim] = []
        orphans: set[int] = set()
        for group in ("first", "rerun"):
            keys = [k for k, g in batch if g == group]
            if keys:
                made, lost = self._create(conn, keys, group)
                claims += made
                orphans |= lost
        if waiting and spare > 0:
            claims += self._claim_due(conn, waiting, spare)
        return results, claims, retrying, orphans

    def _result(self, c: Completion, kind: str) -> Result:
        started = self._inflight.get(c.run_id, c.finished_at)
        if c.succeeded:
            decision, error = extract_decision(self.agent, c.output)
        else:
            decision, error = None, f"{c.failure_class}: {c.failure_reason}"
        return Result(
            case_key=self._keys[c.task_id],
            status="succeeded" if c.succeeded else "failed",
            decision=decision,
            output=c.output if c.succeeded else None,
            error=error,
            cost=_cost(c.output, self.cost_field) if c.succeeded else None,
            latency=max(0.0, c.finished_at - started),
            decided_at=c.finished_at,
            run_id=c.run_id,
            task_id=c.task_id,
            kind=kind,
        )

    def _create(
        self, conn: Connection, batch: list[str], kind: str
    ) -> tuple[list[Claim], set[int]]:
        """Tasks (new ones with their input) and runs already claimed by this runner.
        Returns (claims, task ids that exist with a run of their own still to finish)."""
        exp = self.experiment
        now = time.time()
        lease = now + self.lease_seconds
        by_key = {task_key(exp.id, k): k for k in batch}
        existing = {
            r.key: r.id
            for r in conn.execute(
                select(tasks.c.id, tasks.c.key).where(
                    tasks.c.agent == exp.agent, tasks.c.key.in_(list(by_key))
                )
            )
        }
        new_keys = [k for k in by_key if k not in existing]
        ledger_batches: list[tuple[int, list[tuple[str, dict[str, Any]]], float]] = []
        if new_keys:
            ids = (
                conn.execute(
                    insert(tasks).returning(tasks.c.id, sort_by_parameter_order=True),
                    [{"agent": exp.agent, "key": k, "created_at": now} for k in new_keys],
                )
                .scalars()
                .all()
            )
            inputs = []
            for task_id, k in zip(ids, new_keys, strict=True):
                existing[k] = task_id
                record = {
                    "task_id": task_id,
                    "seq": 1,
                    "data": self.dataset.case(by_key[k]).input,
                    "received_at": now,
                }
                inputs.append(record)
                ledger_batches.append((task_id, [("input", record)], now))
            conn.execute(insert(task_inputs), inputs)
        orphans: set[int] = set()
        fresh: list[int] = []
        if kind == "first" and len(new_keys) < len(by_key):
            # A resumed case whose task exists: its run (queued, or lost and retried) is
            # picked up by the waiting-task claim; one that finished is swept.
            busy = {
                r.task_id
                for r in conn.execute(
                    select(runs.c.task_id).where(
                        runs.c.task_id.in_([existing[k] for k in by_key if k not in new_keys]),
                        runs.c.status.in_(("queued", "running")),
                    )
                )
            }
            for k in by_key:
                if k not in new_keys:
                    self._keys[existing[k]] = by_key[k]
                    (orphans if existing[k] in busy else set()).add(existing[k])
                    if existing[k] not in busy:
                        fresh.append(existing[k])
        elif kind != "first":
            fresh = [existing[k] for k in by_key if k not in new_keys]
        if ledger_batches:
            self.store._append_many(conn, ledger_batches)
        targets = [existing[k] for k in new_keys] + fresh
        for k in by_key:
            self._keys[existing[k]] = by_key[k]
            self._task_kind[existing[k]] = kind
        if not targets:
            return [], orphans
        run_ids = (
            conn.execute(
                insert(runs).returning(runs.c.id, sort_by_parameter_order=True),
                [
                    {
                        "task_id": t,
                        "attempt": 1,
                        "reason": "eval",
                        "status": "running",
                        "created_at": now,
                        "available_at": now,
                        "started_at": now,
                        "worker": self.worker,
                        "lease_expires_at": lease,
                    }
                    for t in targets
                ],
            )
            .scalars()
            .all()
        )
        keys = {existing[k]: k for k in by_key}
        for run_id in run_ids:
            self._kind_of[run_id] = kind
        return [
            Claim(
                run_id=run_id,
                task_id=t,
                agent=exp.agent,
                key=keys[t],
                attempt=1,
                reason="eval",
                note=None,
                lease_expires_at=lease,
            )
            for run_id, t in zip(run_ids, targets, strict=True)
        ], orphans

    def _claim_due(self, conn: Connection, waiting: set[int], limit: int) -> list[Claim]:
        now = time.time()
        lease = now + self.lease_seconds
        busy = runs.alias("busy")
        due = (
            select(runs.c.id)
            .where(
                runs.c.task_id.in_(sorted(waiting)[:5000]),
                runs.c.status == "queued",
                runs.c.available_at <= now,
                ~select(busy.c.id)
                .where(busy.c.task_id == runs.c.task_id, busy.c.status == "running")
                .exists(),
            )
            .order_by(runs.c.available_at, runs.c.id)
            .limit(limit)
        )
        ids = list(conn.execute(due).scalars())
        if not ids:
            return []
        claimed = conn.execute(
            update(runs)
            .where(runs.c.id.in_(ids), runs.c.status == "queued")
            .values(status="running", worker=self.worker, started_at=now, lease_expires_at=lease)
            .returning(runs.c.id, runs.c.task_id, runs.c.attempt, runs.c.reason, runs.c.note)
        ).all()
        for c in claimed:
            self._kind_of[c.id] = self._task_kind.get(c.task_id, "first")
        return [
            Claim(
                run_id=c.id,
                task_id=c.task_id,
                agent=self.experiment.agent,
                key=task_key(self.experiment.id, self._keys[c.task_id]),
                attempt=c.attempt,
                reason=c.reason,
                note=c.note,
                lease_expires_at=lease,
            )
            for c in claimed
        ]

    def _sweep(self, stats: RunStats, only: set[int] | None = None) -> None:
        """Record results of experiment tasks another process finished."""
        exp = self.experiment
        done = done_keys(self.store, exp.id, "first")
        prefix = task_key(exp.id, "")
        found = []
        for row in unrecorded_final_runs(self.store, exp.agent, prefix, exp.id):
            key = case_key_of(exp.id, row.key)
            if key in done or (only is not None and row.task_id not in only):
                continue
            if row.status == "succeeded":
                decision, error = extract_decision(self.agent, row.output)
            else:
                decision, error = None, f"failed: {row.failure_reason}"
            found.append(
                Result(
                    case_key=key,
                    status=row.status,
                    decision=decision,
                    output=row.output,
                    error=error,
                    cost=_cost(row.output, self.cost_field),
                    latency=(row.finished_at - row.started_at) if row.started_at else None,
                    decided_at=row.finished_at,
                    run_id=row.id,
                    task_id=row.task_id,
                )
            )
            if only is not None:
                only.discard(row.task_id)
        if found:
            self.store._transact(lambda conn: insert_results(conn, exp.id, found))
            stats.ran += len(found)
            stats.succeeded += sum(r.error is None for r in found)
            stats.failed += sum(r.error is not None for r in found)

    # -- executing -------------------------------------------------------------------

    def _execute(self, claim: Claim) -> None:
        recorder = StepRecorder(self.store, claim.task_id, claim.run_id)
        try:
            completion = self._executor.run(claim, recorder, worker=self.worker)
        except BaseException as exc:  # a bug of ours: record it rather than lose the case
            completion = Completion(
                run_id=claim.run_id,
                task_id=claim.task_id,
                worker=self.worker,
                attempt=claim.attempt,
                succeeded=False,
                finished_at=time.time(),
                failure_class="terminal",
                failure_reason=f"harness error: {type(exc).__name__}: {exc}",
                steps=tuple(recorder.drain()),
            )
        self._done.put(completion)
        self._wake.set()

    def _drain(self) -> list[Completion]:
        out: list[Completion] = []
        while len(out) < 512:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        return out

    def _release(self) -> None:
        if self._inflight:
            self.store.release(
                self.worker, list(self._inflight), reason="experiment runner interrupted"
            )
            self._inflight.clear()

    def _report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)


class _Pool:
    """Daemon threads (an interrupted runner must be able to exit while agents block)."""

    def __init__(self, size: int) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[Claim], None], Claim] | None]
        self._jobs = queue.SimpleQueue()
        self._size = 0
        self._max = size
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[[Claim], None], claim: Claim) -> None:
        # Threads start as needed, so a small dataset does not start hundreds of them.
        if len(self._threads) < self._max:
            t = threading.Thread(target=self._serve, name="tether-eval", daemon=True)
            t.start()
            self._threads.append(t)
        self._jobs.put((fn, claim))

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, claim = job
            fn(claim)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


def start(
    store: Store,
    graph: Graph,
    dataset: Dataset,
    agent: str,
    *,
    name: str | None = None,
    cost_field: str = "cost",
) -> tuple[Experiment, bool]:
    """Create the experiment ``name`` (default ``AGENT on NAME@VERSION``) or open it to
    resume; returns (experiment, created)."""
    if agent not in graph.agents:
        known = ", ".join(sorted(graph.agents)) or "none found"
        raise ExperimentError(f"no agent named {agent!r} in this project (agents: {known})")
    if dataset.id is None:
        raise ExperimentError("save the dataset first (tether.evals.save_dataset)")
    settings = {
        "decision": decision_spec(graph.agents[agent]),
        "cost_field": cost_field,
        "dataset": dataset.ref,
    }
    return open_experiment(
        store,
        name=name or f"{agent} on {dataset.ref}",
        dataset_id=dataset.id,
        agent=agent,
        settings=settings,
    )


def run_experiment(
    store: Store,
    graph: Graph,
    dataset: Dataset,
    agent: str,
    *,
    name: str | None = None,
    concurrency: int = 64,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> RunStats:
    """Run ``agent`` on every case of ``dataset`` (resuming experiment ``name`` if it
    exists) and return what was done. See :class:`ExperimentRunner`."""
    exp, _ = start(store, graph, dataset, agent, name=name)
    runner = ExperimentRunner(
        store, graph, exp, dataset, concurrency=concurrency, progress=progress, stop=stop
    )
    return runner.run()
