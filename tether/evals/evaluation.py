"""One experiment evaluated: agreement under each as-of, the maturation gap, metrics per
class, the confusion matrix, agreement against label age, worst cases, errors, cost and
latency, as plain data (what ``--json`` prints and the reports render)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tether.evals.datasets import get_dataset
from tether.evals.experiments import get_experiment, results
from tether.evals.loading import require
from tether.evals.models import Dataset, Experiment, Result
from tether.evals.scorers import resolve
from tether.evals.scoring import (
    AsOf,
    Prepared,
    age_curve,
    apply,
    class_key,
    confusion,
    per_class,
)
from tether.store import Store

DEFAULT_AS_OF = ("decision", "latest")


def _stats(values: list[float]) -> dict[str, float | None]:
    np = require("numpy")
    if not values:
        return {"mean": None, "p50": None, "p95": None, "total": None}
    arr = np.asarray(values, dtype=float)
    return {
        "mean": round(float(arr.mean()), 6),
        "p50": round(float(np.percentile(arr, 50)), 6),
        "p95": round(float(np.percentile(arr, 95)), 6),
        "total": round(float(arr.sum()), 6),
    }


def evaluate(
    dataset: Dataset,
    experiment: Experiment,
    found: Sequence[Result],
    *,
    as_of: Sequence[str] = DEFAULT_AS_OF,
    scorer: str = "exact",
    maturity: str | None = None,
    now: float | None = None,
    worst: int = 20,
) -> dict[str, Any]:
    """Evaluate ``found`` (an experiment's results) against ``dataset``.

    ``as_of`` lists the as-of times to report (the first is the primary one: metrics per
    class, confusion and worst cases use it); ``maturity`` (a duration) sets when a label
    counts as mature under ``decision`` and ``latest``.
    """
    from tether.evals.scoring import parse_duration

    now = time.time() if now is None else now
    as_ofs = [AsOf.parse(a) for a in (as_of or DEFAULT_AS_OF)]
    mature = parse_duration(maturity) if maturity else 0.0
    prep = Prepared(dataset, found, resolve(scorer))
    scored = [apply(prep, a, now=now, maturity=mature) for a in as_ofs]
    by_text = {s.as_of.text: s.summary for s in scored}
    extra = {
        a: apply(prep, AsOf.parse(a), now=now, maturity=mature).summary
        for a in DEFAULT_AS_OF
        if a not in by_text
    }
    summaries = {**by_text, **extra}
    primary = scored[0]
    decision_agreement = summaries["decision"]["agreement"]
    gaps = {
        name: (
            round(s["agreement"] - decision_agreement, 6)
            if s["agreement"] is not None and decision_agreement is not None
            else None
        )
        for name, s in summaries.items()
        if name != "decision"
    }
    worst_cases = []
    order = sorted(
        (i for i in range(len(prep.keys)) if primary.state[i] == 0),
        key=lambda i: (prep.score[primary.pick[i]], prep.keys[i]),
    )
    for i in order[:worst]:
        j = int(primary.pick[i])
        if prep.score[j] >= 1.0:
            break
        r = prep.results[i]
        assert r is not None
        worst_cases.append(
            {
                "key": prep.keys[i],
                "decision": r.decision,
                "label": prep.obs_val[j],
                "score": float(prep.score[j]),
                "reason": prep.reasons.get(j),
                "run_id": r.run_id,
            }
        )
    errors = [
        {"key": prep.keys[i], "error": prep.errors.get(i) or prep.reasons.get(int(primary.pick[i]))}
        for i in range(len(prep.keys))
        if primary.state[i] == 1
    ]
    rs = [r for r in prep.results if r is not None]
    return {
        "experiment": {
            "id": experiment.id,
            "name": experiment.name,
            "agent": experiment.agent,
            "settings": experiment.settings,
            "created_at": experiment.created_at,
            "finished_at": experiment.finished_at,
        },
        "dataset": {
            "name": dataset.name,
            "version": dataset.version,
            "ref": dataset.ref,
            "cases": len(dataset),
        },
        "scorer": scorer,
        "now": now,
        "maturity": maturity,
        "primary": primary.as_of.text,
        "as_of": summaries,
        "maturation_gap": gaps,
        "per_class": per_class(prep, primary),
        "confusion": confusion(prep, primary),
        "age_curve": age_curve(prep, now=now),
        "worst_cases": worst_cases,
        "errors": errors[:worst],
        "error_count": len(errors),
        "cost": _stats([r.cost for r in rs if r.cost is not None]),
        "latency": _stats([r.latency for r in rs if r.latency is not None]),
    }


def evaluate_experiment(store: Store, ref: str | int, **options: Any) -> dict[str, Any]:
    """:func:`evaluate` for a stored experiment (by id or name), on its dataset version."""
    exp = get_experiment(store, ref)
    return evaluate(get_dataset(store, exp.dataset_id), exp, results(store, exp.id), **options)


def correctness(
    dataset: Dataset,
    found: Sequence[Result],
    *,
    as_of: str = "latest",
    scorer: str = "exact",
    now: float | None = None,
) -> dict[str, float | None]:
    """Per case key its score under ``as_of`` (None: error, missing, unlabeled or
    immature): what comparison and subsets work from."""
    now = time.time() if now is None else now
    prep = Prepared(dataset, found, resolve(scorer))
    s = apply(prep, AsOf.parse(as_of), now=now)
    return {
        k: (float(prep.score[s.pick[i]]) if s.state[i] == 0 else None)
        for i, k in enumerate(prep.keys)
    }


__all__ = ["class_key", "correctness", "evaluate", "evaluate_experiment"]
