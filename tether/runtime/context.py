"""The context an agent receives: its task, its inputs, its upstream, its history, and steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from types import TracebackType
from typing import Any

from tether.capture.recorder import enter_step, exit_step
from tether.jsonable import to_json
from tether.review import examples as _examples  # at import: runs start on many threads
from tether.store import Run, StepWrite, Store, TaskInput
from tether.store.writes import Claim


class StepRecorder:
    """A run's steps in order. Unkeyed steps are buffered and written with the run's
    outcome (or by the heartbeat); keyed steps are written as started before their block
    runs, so a crash inside the block leaves a trace the next attempt can see."""

    def __init__(self, store: Store, task_id: int, run_id: int) -> None:
        self._store = store
        self._task_id = task_id
        self._run_id = run_id
        self._lock = threading.Lock()
        self._seq = 0
        self._buffer: list[StepWrite] = []
        self.completed: dict[str, Any] = {}
        """Keys completed in this run, with their outputs."""

    @property
    def count(self) -> int:
        """How many steps this run has started so far."""
        return self._seq

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def started(self, step: StepWrite) -> None:
        """Durably record a keyed step as running, now."""
        self._store.insert_steps(self._task_id, self._run_id, [step])

    def finished(self, step: StepWrite) -> None:
        with self._lock:
            self._buffer.append(step)
            if step.key is not None and step.status in ("succeeded", "skipped"):
                self.completed[step.key] = step.output

    def flush(self) -> None:
        """Write the buffered steps now (the heartbeat does, so a crash loses little)."""
        pending = self.drain()
        if pending:
            try:
                self._store.insert_steps(self._task_id, self._run_id, pending)
            except Exception:
                with self._lock:  # keep them for the completion to write
                    self._buffer[:0] = pending
                raise

    def drain(self) -> list[StepWrite]:
        """Take the buffered steps (for a heartbeat flush or the run's completion)."""
        with self._lock:
            out, self._buffer = self._buffer, []
            return out


class StepHandle:
    """A step in progress: ``with ctx.step("email broker", key=...) as step: ...``.

    Set ``step.output`` (or call :meth:`record`) to keep what the step produced. The step
    is recorded when the block exits: succeeded, or failed with the exception (which
    propagates). For a keyed step, ``done`` says an earlier run of the task completed it
    (its ``previous_output`` is there), and ``unknown`` that one started it but never
    finished, so the agent must reconcile with the world before acting again.
    """

    def __init__(
        self,
        recorder: StepRecorder,
        name: str,
        *,
        key: str | None,
        input: Any,
        earlier: tuple[str, Any] | None,
    ) -> None:
        self.name = name
        self.key = key
        self.input = to_json(input, what=f"step {name!r} input")
        self.output: Any = None
        self.seq = recorder.next_seq()
        self._recorder = recorder
        self._started_at = 0.0
        self._marked = False
        self._earlier_status = earlier[0] if earlier else None
        self.previous_output: Any = earlier[1] if earlier else None
        self.status = "pending"

    @property
    def done(self) -> bool:
        """An earlier run of this task completed a step with this key."""
        return self._earlier_status == "succeeded"

    @property
    def unknown(self) -> bool:
        """An earlier run started a step with this key but never recorded its end."""
        return self._earlier_status == "running"

    def record(self, output: Any) -> Any:
        """Keep ``output`` as the step's output and return it."""
        self.output = output
        return output

    def __enter__(self) -> StepHandle:
        self._started_at = time.time()
        self._capture = enter_step(self.seq)  # HTTP exchanges made now link to this step
        self.status = "running"
        self._marked = self.key is not None and not self.done
        if self._marked:
            # Durably "started" before the block acts on the world: if the worker dies
            # inside it, the next run sees `unknown` and reconciles.
            self._recorder.started(self._write(inserted=False, finished=False))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        exit_step(getattr(self, "_capture", None))
        if exc is None and self.done:
            # Completed by an earlier run: by the contract the block skipped the action.
            self.status = "skipped"
            self.output = self.previous_output
            self._recorder.finished(self._write(inserted=False, finished=True))
        elif exc is None:
            try:
                self.output = to_json(self.output, what=f"step {self.name!r} output")
            except Exception:
                self.status = "failed"
                self.output = None  # what cannot be stored must not reach the store
                self._recorder.finished(
                    self._write(inserted=self._marked, finished=True, error="output "
                                "cannot be stored as JSON")
                )
                raise
            self.status = "succeeded"
            self._recorder.finished(self._write(inserted=self._marked, finished=True))
        else:
            self.status = "failed"
            self.output = None
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._recorder.finished(
                self._write(inserted=self._marked, finished=True, error=error)
            )

    async def __aenter__(self) -> StepHandle:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _write(self, *, inserted: bool, finished: bool, error: str | None = None) -> StepWrite:
        return StepWrite(
            seq=self.seq,
            name=self.name,
            key=self.key,
            input=self.input,
            output=self.output if finished else None,
            status=self.status if finished else "running",
            error=error,
            started_at=self._started_at,
            finished_at=time.time() if finished else None,
            inserted=inserted,
        )


class Context:
    """What an agent's function receives: ``def my_agent(ctx: tether.Context): ...``.

    Everything read from the store (inputs, upstream outputs, history) is loaded on first
    use, so an agent pays only for what it reads.
    """

    def __init__(
        self, claim: Claim, *, store: Store, recorder: StepRecorder, agent: Any = None
    ) -> None:
        self._claim = claim
        self._store = store
        self._recorder = recorder
        self._agent = agent  # the Agent object: its example settings (tether.review)

    # -- identity ------------------------------------------------------------------

    @property
    def agent(self) -> str:
        """This agent's name."""
        return self._claim.agent

    @property
    def key(self) -> str:
        """The task's key (e.g. a case id)."""
        return self._claim.key

    @property
    def task_id(self) -> int:
        """The task's id in the store."""
        return self._claim.task_id

    @property
    def run_id(self) -> int:
        """This run's id in the store."""
        return self._claim.run_id

    @property
    def attempt(self) -> int:
        """1 for a first run; 2, 3, … for retries after retryable failures."""
        return self._claim.attempt

    @property
    def reason(self) -> str:
        """Why this run started: submitted, trigger, retry, operator or eval."""
        return self._claim.reason

    @property
    def note(self) -> str | None:
        """The operator's note, for a run an operator started."""
        return self._claim.note

    # -- what the task knows -------------------------------------------------------

    @cached_property
    def inputs(self) -> list[TaskInput]:
        """Every input the task received so far, oldest first, with when it arrived."""
        return self._store.inputs(self._claim.task_id)

    @property
    def input(self) -> Any:
        """The latest input the task received (None if none)."""
        return self.inputs[-1].data if self.inputs else None

    @cached_property
    def _upstream(self) -> dict[str, tuple[str, Any]]:
        return self._store.upstream_outputs(self._claim.task_id)

    @property
    def upstream(self) -> Mapping[str, Any]:
        """For each trigger that fired for this task, the output of the run that emitted it."""
        return {name: out for name, (_ref, out) in self._upstream.items()}

    @property
    def upstream_tasks(self) -> Mapping[str, str]:
        """For each trigger that fired, the upstream task as ``AGENT/KEY``."""
        return {name: ref for name, (ref, _out) in self._upstream.items()}

    @cached_property
    def history(self) -> list[Run]:
        """Earlier runs of this task, oldest first, with their steps and outcomes: what
        already happened in the world, for the agent to reconcile before acting again."""
        return self._store.runs_of(self._claim.task_id, before_run=self._claim.run_id)

    def examples(self, k: int = 3) -> list[Any]:
        """At most ``k`` reviewed failures of this agent similar enough to this case to
        help (cosine similarity at least the agent's ``example_threshold``), nearest
        first; an empty list when none is. Each has ``input``, ``corrected_output``,
        ``reason`` and ``similarity``. What was returned is recorded with the run.
        """
        return _examples.for_run(
            self._store, self._agent or self.agent, self.run_id, self.input, self.upstream, k
        )

    # -- recording -----------------------------------------------------------------

    def step(self, name: str, *, key: str | None = None, input: Any = None) -> StepHandle:
        """Record an action the agent takes, as a context manager.

        Args:
            name: what the action is ("read the document", "emailed the broker").
            key: an idempotency key; with one, the step is recorded as started before the
                block runs, and ``done`` / ``unknown`` tell what earlier runs of this task
                did under the same key.
            input: what the action was given (stored as JSON).
        """
        earlier = self._earlier(key) if key is not None else None
        return StepHandle(self._recorder, name, key=key, input=input, earlier=earlier)

    def once(
        self,
        key: str,
        fn: Callable[[], Any],
        *,
        name: str | None = None,
        input: Any = None,
        reconcile: Callable[[], Any] | None = None,
    ) -> Any:
        """Do ``fn()`` at most once per task: if an earlier run (or this one) completed
        ``key``, return its recorded output without calling ``fn``.

        If an earlier run started ``key`` but never recorded its end (the worker died:
        nobody knows whether the email went out), ``reconcile()`` is asked first: return
        what the world shows (e.g. the sent message found in the mailbox) to record it as
        the outcome, or None if the action did not happen, and then ``fn`` runs.
        Without ``reconcile``, ``fn`` runs again in that case.
        """
        with self.step(name or key, key=key, input=input) as step:
            if not step.done:
                found = reconcile() if step.unknown and reconcile is not None else None
                step.output = found if found is not None else fn()
        return step.output

    def _earlier(self, key: str) -> tuple[str, Any] | None:
        if key in self._recorder.completed:
            return ("succeeded", self._recorder.completed[key])
        # Most conclusive first: a completion anywhere beats a start with no end.
        found: tuple[str, Any] | None = None
        for run in self.history:
            for s in run.steps:
                if s.key != key:
                    continue
                if s.status in ("succeeded", "skipped"):
                    return ("succeeded", s.output)
                if s.status == "running" and found is None:
                    found = ("running", None)
        return found
