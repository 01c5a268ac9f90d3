"""Executing one claimed run: call the agent, classify what happened, derive the triggers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

from tether import capture
from tether.graph.agent import Agent, Upstream
from tether.graph.registry import Graph
from tether.jsonable import to_json
from tether.outcomes import Waiting
from tether.retry import Failure, classify
from tether.review.flow import rollout
from tether.runtime.context import Context, StepRecorder
from tether.store import Completion, Edge, FailureClass, Store
from tether.store.writes import Claim
from tether.triage.enforce import Triage

EVAL_KEY_PREFIX = "eval:"
"""Task keys of evaluation experiments (``eval:<experiment id>:<case key>``): their runs
never emit triggers, so an experiment cannot start production work downstream."""


def edges_for(graph: Graph, agent: Agent, key: str, output: Any) -> tuple[Edge, ...]:
    """The trigger edges a successful run of ``agent`` for ``key`` records."""
    edges: list[Edge] = []
    for name in agent.emitted(output):
        upstream = Upstream(trigger=name, agent=agent.name, key=key, output=output)
        for sub in graph.subscribers(name):
            edges.append(
                Edge(
                    name=name,
                    agent=sub.name,
                    key=sub.downstream_key(upstream),
                    requires=sub.subscribes,
                )
            )
    return tuple(edges)


class Executor:
    """Runs claimed runs of one graph against one store; thread-safe.

    Coroutine agents run on one shared event loop (started on first use) so that many
    async runs share it; plain functions run on the calling thread.
    """

    def __init__(self, store: Store, graph: Graph) -> None:
        self.store = store
        self.graph = graph
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        # The production bar's post-processing step (holds low-scoring runs for review).
        self.triage = Triage(store)
        # Read every agent's bar now, not in the first runs' threads: lookups there
        # staggered the first runs into cohorts that group commit then kept apart
        # (half-size batches, a third fewer runs/s; docs/benchmarks.md).
        self.triage.prefetch(graph.agents)
        if capture.config_for(store).enabled:
            # Patch the HTTP clients now rather than in the first run: importing httpx and
            # requests takes a few hundred ms of CPU, which a worker's first run (and, on
            # a busy machine, every run beside it) would otherwise wait for.
            from tether.capture.transports import install

            install()

    def recorder(self, claim: Claim) -> StepRecorder:
        """A fresh step recorder for a claimed run."""
        return StepRecorder(self.store, claim.task_id, claim.run_id)

    def run(self, claim: Claim, recorder: StepRecorder, *, worker: str) -> Completion:
        """Execute a claimed run to a :class:`Completion` (never raises for agent errors)."""
        agent = self.graph.agents.get(claim.agent)
        if agent is None:
            return self._failed(
                claim,
                recorder,
                worker,
                Failure(
                    FailureClass.TERMINAL,
                    f"no agent named {claim.agent!r} in this project; known: "
                    f"{', '.join(sorted(self.graph.agents)) or 'none'}",
                ),
                None,
            )
        ctx = Context(claim, store=self.store, recorder=recorder, agent=agent)
        started = time.time()
        try:
            # World capture: HTTP exchanges made while the agent runs belong to this run.
            with capture.recording(self.store, claim.run_id, claim.task_id):
                result = agent.fn(ctx)
                if asyncio.iscoroutine(result):
                    result = self._await(capture.bind(result))
            waiting_for = None
            if isinstance(result, Waiting):
                waiting_for, result = result.reason or "waiting", result.output
            output = to_json(result)
            if waiting_for is None:
                waiting_for = self.triage.check(agent, ctx, output, steps=recorder.count,
                                                started=started)
            # A task still waiting has not reached its outcome: nothing downstream yet.
            edges = (
                ()
                if waiting_for or claim.key.startswith(EVAL_KEY_PREFIX)
                else edges_for(self.graph, agent, claim.key, output)
            )
        except Exception as exc:
            return self._failed(claim, recorder, worker, classify(exc, retry_on=agent.retry_on),
                                agent)
        if agent.review_rate > 0:  # rollout review samples successful runs
            rollout(self.store, agent, claim)
        return Completion(
            run_id=claim.run_id,
            task_id=claim.task_id,
            worker=worker,
            attempt=claim.attempt,
            succeeded=True,
            finished_at=time.time(),
            output=output,
            waiting_for=waiting_for,
            steps=tuple(recorder.drain()),
            edges=edges,
        )

    def _failed(
        self,
        claim: Claim,
        recorder: StepRecorder,
        worker: str,
        failure: Failure,
        agent: Agent | None,
    ) -> Completion:
        now = time.time()
        retry_at = None
        reason = capture.scrub_reason(claim.run_id, failure.reason)  # no secret in the store
        if failure.retryable and agent is not None:
            retry_at = agent.retry.retry_at(claim.attempt, now)
            if retry_at is None and agent.retry.max_attempts > 1:
                reason = f"{reason} (gave up after {claim.attempt} attempts)"
        return Completion(
            run_id=claim.run_id,
            task_id=claim.task_id,
            worker=worker,
            attempt=claim.attempt,
            succeeded=False,
            finished_at=now,
            failure_class=failure.cls.value,
            failure_reason=reason,
            steps=tuple(recorder.drain()),
            retry_at=retry_at,
        )

    def retry_at(self, agent_name: str, attempt: int) -> float | None:
        """The retry rule for a run whose worker was lost (used by the reaper)."""
        agent = self.graph.agents.get(agent_name)
        if agent is None:
            return None
        return agent.retry.retry_at(attempt, time.time())

    def _await(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._loop is None:
            self._start_loop()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _start_loop(self) -> None:
        with self._loop_lock:
            if self._loop is not None:
                return
            self._loop = self._new_loop()

    @staticmethod
    def _new_loop() -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=serve, name="tether-async", daemon=True)
        thread.start()
        ready.wait()
        return loop

    def close(self) -> None:
        """Stop the shared event loop, if one was started."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
