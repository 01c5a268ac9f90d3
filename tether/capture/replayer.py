"""Replay: run an agent again, in-process, against the world its run recorded.

The patched transports answer from the run's recorded exchanges instead of the network:
each request is matched by fingerprint, in order (a request made more often than it was
recorded gets the last recorded answer again, and is counted). A request the run never
made raises :class:`ReplayError` naming it. Nothing is written to the store: a replay is
not a run (no run row, no steps, no triggers, no exchanges); the agent sees the original
run's identity, inputs (as they were when it started), upstream outputs and history.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from tether.capture.blobs import BlobStore
from tether.capture.config import CaptureConfig, config_for
from tether.capture.queries import Exchange, blobs_of, exchanges
from tether.capture.recorder import RawExchange, RunCapture, activate, bind, prepare_request
from tether.capture.redact import Redactor
from tether.errors import NotFound, TetherError
from tether.jsonable import canonical, to_json
from tether.outcomes import Waiting
from tether.retry import classify
from tether.runtime.context import Context, StepRecorder
from tether.store import RunStatus, StepWrite, Store, TaskInput
from tether.store.writes import Claim

if TYPE_CHECKING:
    from tether.graph.registry import Graph
    from tether.project import Project

_DROP = frozenset({"content-length", "transfer-encoding"})


class ReplayError(TetherError):
    """A replay could not answer a request from the recorded world."""


class World:
    """The recorded exchanges of one run, answering requests by fingerprint in order."""

    def __init__(self, run_id: int, recorded: list[Exchange], blobs: BlobStore,
                 config: CaptureConfig) -> None:
        self.run_id = run_id
        self.config = config
        self._blobs = blobs
        self._redactor = Redactor(config.redact_headers, config.redact_fields)
        self._secrets: set[bytes] = set()
        self._queues: dict[str, deque[Exchange]] = {}
        for ex in recorded:
            self._queues.setdefault(ex.fingerprint, deque()).append(ex)
        self._last: dict[str, Exchange] = {}
        self._lock = threading.Lock()
        self.recorded = len(recorded)
        self.answered: list[int] = []
        """Recorded seqs used, in the order the replay asked for them."""
        self.repeated = 0
        self.unrecorded: list[str] = []

    def answer(self, raw: RawExchange) -> tuple[int, list[tuple[str, str]], bytes]:
        """``(status, headers, body)`` recorded for this request (see the module doc)."""
        with self._lock:
            url, _headers, _body, fp = prepare_request(
                self._redactor, self.config, raw.method, raw.url, raw.request_headers,
                raw.request_body, self._secrets,
            )
            queue = self._queues.get(fp)
            if queue:
                ex = queue.popleft()
                self._last[fp] = ex
            elif fp in self._last:
                ex = self._last[fp]
                self.repeated += 1
            else:
                what = f"{raw.method} {url}"
                self.unrecorded.append(what)
                raise ReplayError(
                    f"replay of run {self.run_id}: {what} was not made by the original run "
                    f"(fingerprint {fp[:12]}), so there is no recorded answer; the agent's "
                    "requests changed, or the run was captured with other fingerprint settings"
                )
            self.answered.append(ex.seq)
        if ex.error is not None:
            raise ReplayError(
                f"replay of run {self.run_id}: {ex.method} {ex.url} failed in the original "
                f"run ({ex.error})"
            )
        if ex.response_body not in ("stored", "empty") or ex.response_sha256 is None:
            raise ReplayError(
                f"replay of run {self.run_id}: the answer to {ex.method} {ex.url} was not "
                f"kept ({ex.response_body}: {ex.note or 'no body'}), so it cannot be replayed"
            )
        try:
            body = self._blobs.get(ex.response_sha256)
        except NotFound as exc:
            raise ReplayError(
                f"replay of run {self.run_id}: the body of {ex.method} {ex.url} is missing "
                f"from {self._blobs.location} ({exc})"
            ) from None
        headers = [
            (k, v)
            for k, v in ex.response_headers
            if k.lower() not in _DROP
            and not (k.lower() == "content-encoding" and ex.response_encoding)
        ]
        headers.append(("content-length", str(len(body))))
        assert ex.status is not None
        return ex.status, headers, body

    @property
    def unused(self) -> list[int]:
        """Recorded seqs the replay never asked for."""
        with self._lock:
            return sorted(ex.seq for q in self._queues.values() for ex in q)


class _SideRecorder(StepRecorder):
    """Steps of a replay stay in memory: nothing is written to the store."""

    def started(self, step: StepWrite) -> None:
        return

    def flush(self) -> None:
        return


class _ReplayContext(Context):
    """The original run's context, with inputs as they were when it started."""

    def __init__(self, claim: Claim, *, store: Store, recorder: StepRecorder,
                 as_of: float) -> None:
        super().__init__(claim, store=store, recorder=recorder)
        self._as_of = as_of

    @cached_property
    def inputs(self) -> list[TaskInput]:
        return [i for i in self._store.inputs(self._claim.task_id) if i.received_at <= self._as_of]


@dataclass(frozen=True)
class ReplayResult:
    """What replaying a run did, and whether it reproduced the original outcome."""

    run_id: int
    task: str
    matches: bool
    """The replay reached the original outcome: the same output (canonical JSON), or for a
    failed run the same failure class and reason."""
    original_status: str
    original_output: Any
    output: Any
    error: str | None
    """The replay's failure (``class: reason``), if the agent raised."""
    diff: str
    """A unified diff of original → replayed output (pretty JSON) when they differ."""
    recorded: int
    answered: list[int]
    unused: list[int]
    repeated: int
    unrecorded: list[str] = field(default_factory=list)
    original_steps: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def replay(project: Project | tuple[Store, Graph], run_id: int) -> ReplayResult:
    """Re-run the agent of run ``run_id`` in-process against its recorded world.

    Args:
        project: the project (or ``(store, graph)``) the run belongs to.
        run_id: the run to reproduce.

    Raises:
        NotFound: no such run, or no agent of that name in the project.
    """
    if isinstance(project, tuple):
        store, graph = project
    else:
        store, graph = project.store, project.graph
    run = store.get_run(run_id)
    task = store.get_task(run.task_id)
    agent = graph.agents.get(task.agent)
    if agent is None:
        raise NotFound(f"run {run_id} is of agent {task.agent!r}, which this project does not "
                       "define; replay needs the agent's code")
    config = config_for(store)
    world = World(run_id, exchanges(store, run_id), blobs_of(store), config)
    claim = Claim(run_id=run.id, task_id=task.id, agent=task.agent, key=task.key,
                  attempt=run.attempt, reason=run.reason, note=run.note, lease_expires_at=0.0)
    recorder = _SideRecorder(store, task.id, run.id)
    ctx = _ReplayContext(claim, store=store, recorder=recorder,
                         as_of=run.started_at or run.created_at)
    cap = RunCapture(None, run.id, task.id, config=config, world=world)
    output: Any = None
    error: str | None = None
    failure_class: str | None = None
    with activate(cap):
        try:
            result = agent.fn(ctx)
            if asyncio.iscoroutine(result):
                result = asyncio.run(bind(result))
            if isinstance(result, Waiting):
                result = result.output
            output = to_json(result)
        except Exception as exc:
            failure = classify(exc, retry_on=agent.retry_on)
            failure_class, error = failure.cls.value, failure.reason
    status = run.status.value if isinstance(run.status, RunStatus) else str(run.status)
    if status == "failed":
        original_reason = run.failure_reason or ""
        matches = (
            error is not None
            and failure_class == (run.failure_class.value if run.failure_class else None)
            and original_reason.startswith(error)
        )
    else:
        matches = error is None and canonical(output) == canonical(run.output)
    diff = ""
    if not matches:
        before = _pretty(run.output) if status != "failed" else [f"failed: {run.failure_reason}"]
        after = _pretty(output) if error is None else [f"failed: {error}"]
        diff = "\n".join(difflib.unified_diff(before, after, "original", "replay", lineterm=""))
    return ReplayResult(
        run_id=run.id,
        task=task.ref,
        matches=matches,
        original_status=status,
        original_output=run.output,
        output=output,
        error=f"{failure_class}: {error}" if error is not None else None,
        diff=diff,
        recorded=world.recorded,
        answered=world.answered,
        unused=world.unused,
        repeated=world.repeated,
        unrecorded=world.unrecorded,
        original_steps=[s.name for s in run.steps],
        steps=[s.name for s in recorder.drain()],
    )
