"""The ``triage`` post-processing step the executor runs inside an agent's run.

When the agent has a bar and a trained model, every successful run's output is scored
(recorded as a step named ``triage``: model, score, threshold, decision). At or above the
threshold the run completes normally (and is sampled for rollout review at the bar's
rate); below it, the run succeeds *waiting for review*: no triggers fire until
:func:`tether.triage.hold.release_held`. The builder's agent code does not change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tether.graph.agent import Agent
from tether.review.flow import enqueue, sampled
from tether.store import Store
from tether.triage.bars import Bar, get_bar
from tether.triage.data import TRIAGE_STEP
from tether.triage.features import raw_features
from tether.triage.hold import WAITING_FOR
from tether.triage.models import TriageModel, latest_model, latest_model_id

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    """The triage step's outcome."""

    held: bool
    score: float | None
    threshold: float | None
    model_id: int
    sampled: bool = False


def stricter(bar: Bar, trained_for: dict[str, Any]) -> bool:
    """Whether ``bar`` asks more than the bar a model was trained for."""
    return bar.target > float(trained_for.get("target", 1.0)) or bar.confidence > float(
        trained_for.get("confidence", 1.0)
    )


class Triage:
    """Per-worker triage: the newest bar and model per agent (re-read every ``ttl`` s)."""

    def __init__(self, store: Store, ttl: float = 10.0) -> None:
        self.store = store
        self.ttl = ttl
        self._seen: dict[str, tuple[float, Bar | None, TriageModel | None]] = {}
        self._refresh = threading.Lock()

    def prefetch(self, agents: Iterable[str]) -> None:
        """Read these agents' bars and models now (a worker calls this before its first
        run). A store that cannot answer yet is left for the runs' own lookups."""
        now = time.time()
        for name in agents:
            try:
                self._lookup(name, now)
            except Exception:
                log.warning("could not read the production bar of %s yet", name,
                            exc_info=True)

    def _lookup(self, agent: str, now: float) -> tuple[Bar | None, TriageModel | None]:
        hit = self._seen.get(agent)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1], hit[2]
        # One refresh at a time: a worker's run threads all miss together at start; one
        # reads the bar while the others wait for its answer.
        with self._refresh:
            hit = self._seen.get(agent)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1], hit[2]
            return self._refresh_bar(agent, now, hit)

    def _refresh_bar(
        self, agent: str, now: float, hit: tuple[float, Bar | None, TriageModel | None] | None
    ) -> tuple[Bar | None, TriageModel | None]:
        try:
            bar = get_bar(self.store, agent)
            model = None
            if bar is not None:
                # Re-read the model (its text is large) only when a newer one exists.
                known = hit[2] if hit is not None else None
                newest = latest_model_id(self.store, agent)
                if known is not None and known.id == newest:
                    model = known
                elif newest is not None:
                    model = latest_model(self.store, agent)
        except Exception:
            # The store hiccuped: keep enforcing what we knew rather than letting runs
            # through unchecked; with nothing known, the run fails and is retried.
            if hit is None:
                raise
            return hit[1], hit[2]
        self._seen[agent] = (now, bar, model)
        return bar, model

    def check(
        self, agent: Agent, ctx: Any, output: Any, *, steps: int, started: float
    ) -> str | None:
        """Run the triage step for a successful run; returns ``"review"`` when the run is
        held (its task then waits for review), None when it completes normally."""
        if ctx.reason == "eval":
            return None  # an experiment's run is scored by the evaluation, not reviewed
        now = time.time()
        bar, model = self._lookup(agent.name, now)
        if bar is None or model is None:
            return None
        with ctx.step(TRIAGE_STEP, input={"model": model.id, "threshold": model.threshold}) as st:
            decision = self._decide(agent, ctx, output, model, bar, steps, now - started)
            st.output = {
                "score": decision.score, "threshold": decision.threshold,
                "decision": "held for review" if decision.held else "automated",
                "rollout_review": decision.sampled,
            }
        if decision.held or decision.sampled:
            enqueue(self.store, ctx.run_id, source="triage" if decision.held else "rollout",
                    held=decision.held, score=decision.score)
        return WAITING_FOR if decision.held else None

    @staticmethod
    def _decide(
        agent: Agent, ctx: Any, output: Any, model: TriageModel, bar: Bar, steps: int,
        latency: float,
    ) -> Decision:
        if model.threshold is None:  # no threshold met the bar: every run is reviewed
            return Decision(True, None, None, model.id)
        if stricter(bar, model.bar):
            # The threshold was chosen for a laxer bar: it vouches for nothing now. Every
            # run goes to review until the model is retrained for the new bar.
            return Decision(True, None, model.threshold, model.id)
        try:
            row = raw_features(agent, ctx, output, steps=steps, attempt=ctx.attempt,
                               latency=latency)
            score = model.score(row)
        except Exception:
            # A run the model cannot score is a run nobody vouched for: a person reviews it.
            return Decision(True, None, model.threshold, model.id)
        if score < model.threshold:
            return Decision(True, score, model.threshold, model.id)
        return Decision(False, score, model.threshold, model.id,
                        sampled=sampled(ctx.run_id, bar.rollout_rate))
