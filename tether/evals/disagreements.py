"""Disagreement triage: was the agent wrong, or did the world move?

A case the agent got wrong is re-run at once (see ``rerun_if`` of
:meth:`tether.evals.runner.ExperimentRunner.run`), and the HTTP exchanges of the two runs
(recorded by world capture, issue 5) are compared:

- **world_moved**: the same request got a different answer (the response bodies differ);
- **agent_nondeterministic**: every common request got the same answer, yet the decision
  changed;
- **agent_wrong**: same answers, same wrong decision.

:func:`classify_disagreement` is a pure function of plain data; :func:`exchanges_of` is
the one place that reads the exchanges, from ``tether.capture``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from tether import capture
from tether.evals.models import Dataset, Result
from tether.evals.scorers import resolve
from tether.evals.scoring import AsOf
from tether.store import Store

Classification = Literal["world_moved", "agent_nondeterministic", "agent_wrong"]
Exchange = tuple[str, str | None]
"""``(request fingerprint, response sha256)`` of one HTTP exchange."""


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def classify_disagreement(
    first: Sequence[Exchange],
    second: Sequence[Exchange],
    first_decision: Any,
    second_decision: Any,
) -> Classification:
    """Classify a disagreeing case from its two runs' exchanges and decisions.

    The n-th exchange with a request fingerprint in one run is matched with the n-th with
    the same fingerprint in the other (a request repeated within a run is compared in
    order). Any matched pair with different responses means the world moved; otherwise a
    changed decision means the agent is nondeterministic, and the same decision that it
    is wrong.
    """
    seen: dict[str, list[str | None]] = {}
    for fp, sha in second:
        seen.setdefault(fp, []).append(sha)
    used: dict[str, int] = {}
    for fp, sha in first:
        answers = seen.get(fp)
        n = used.get(fp, 0)
        if answers is None or n >= len(answers):
            continue
        used[fp] = n + 1
        if answers[n] != sha:
            return "world_moved"
    if not _same(first_decision, second_decision):
        return "agent_nondeterministic"
    return "agent_wrong"


def exchanges_of(store: Store, run_id: int) -> list[Exchange]:
    """A run's recorded exchanges (world capture) as ``(fingerprint, response_sha256)``."""
    return [(x.fingerprint, x.response_sha256) for x in capture.exchanges(store, run_id)]


def disagrees(
    dataset: Dataset, *, as_of: str = "latest", scorer: str = "exact", now: float | None = None
) -> Callable[[Result], bool]:
    """A predicate: did this result disagree with the case's label (as of ``as_of``)?
    Errors and unlabeled cases do not count as disagreements."""
    score = resolve(scorer)
    when = AsOf.parse(as_of)
    now = time.time() if now is None else now

    def check(r: Result) -> bool:
        if r.error is not None:
            return False
        case = dataset.case(r.case_key)
        base = case.decided_at if case.decided_at is not None else r.decided_at
        t = {"latest": float("inf"), "decision": base}.get(when.mode, base + when.window)
        label = case.label_at(t)
        if label is None:
            return False
        try:
            return score(r.decision, label.value, case).score < 1.0
        except Exception:
            return False

    return check


def triage(
    store: Store,
    first: Sequence[Result],
    reruns: Sequence[Result],
    *,
    exchanges: Callable[[Store, int], list[Exchange]] = exchanges_of,
) -> list[dict[str, Any]]:
    """Classify every case that has both a first run and a re-run."""
    again = {r.case_key: r for r in reruns}
    out = []
    for r in first:
        other = again.get(r.case_key)
        if other is None:
            continue
        if other.error is not None:
            kind = "rerun_failed"
        else:
            kind = classify_disagreement(
                exchanges(store, r.run_id),
                exchanges(store, other.run_id),
                r.decision,
                other.decision,
            )
        out.append(
            {
                "key": r.case_key,
                "classification": kind,
                "first_decision": r.decision,
                "rerun_decision": other.decision,
                "first_run": r.run_id,
                "rerun_run": other.run_id,
            }
        )
    return out
