"""Comparing two experiments case by case: fixed and regressed cases, agreement delta with
a paired significance test (exact McNemar) and a bootstrap interval, per-class deltas, and
a gate for CI (too many regressions, or too large a drop, fails)."""

from __future__ import annotations

import time
from typing import Any

from tether.evals.datasets import get_dataset
from tether.evals.evaluation import correctness, evaluate
from tether.evals.experiments import get_experiment, results
from tether.evals.loading import require
from tether.store import Store


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (A right only, B right
    only)."""
    if a_only + b_only == 0:
        return 1.0
    from statsmodels.stats.contingency_tables import mcnemar

    return float(mcnemar([[0, a_only], [b_only, 0]], exact=True).pvalue)


def bootstrap_delta(
    a: Any, b: Any, *, seed: int = 0, rounds: int = 2000
) -> tuple[float | None, float | None]:
    """95% percentile bootstrap interval of mean(b - a) over paired cases."""
    np = require("numpy")
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(diff) == 0:
        return None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(rounds, len(diff)))
    means = diff[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return round(float(lo), 6), round(float(hi), 6)


def compare(
    store: Store,
    a_ref: str | int,
    b_ref: str | int,
    *,
    as_of: str = "latest",
    scorer: str = "exact",
    max_regressions: int | None = None,
    max_drop: float | None = None,
    seed: int = 0,
    now: float | None = None,
) -> dict[str, Any]:
    """Compare experiment B (the candidate) with A (the baseline).

    Both are scored against B's dataset version (the newer labels), case by case on the
    cases both scored. ``passed`` is False when more than ``max_regressions`` cases
    regressed or agreement dropped by more than ``max_drop``.
    """
    now = time.time() if now is None else now
    a, b = get_experiment(store, a_ref), get_experiment(store, b_ref)
    dataset = get_dataset(store, b.dataset_id)
    ra, rb = results(store, a.id), results(store, b.id)
    sa = correctness(dataset, ra, as_of=as_of, scorer=scorer, now=now)
    sb = correctness(dataset, rb, as_of=as_of, scorer=scorer, now=now)
    paired = [k for k in sa if sa[k] is not None and sb.get(k) is not None]
    xa = [float(sa[k]) for k in paired]  # type: ignore[arg-type]
    xb = [float(sb[k]) for k in paired]  # type: ignore[arg-type]
    by_key = {r.case_key: r for r in ra}, {r.case_key: r for r in rb}
    fixed: list[dict[str, Any]] = []
    regressed: list[dict[str, Any]] = []
    for k, va, vb in zip(paired, xa, xb, strict=True):
        if vb == va:
            continue
        row = {
            "key": k,
            "a": va,
            "b": vb,
            "a_decision": by_key[0][k].decision,
            "b_decision": by_key[1][k].decision,
        }
        (fixed if vb > va else regressed).append(row)
    n = len(paired)
    agree_a = sum(xa) / n if n else None
    agree_b = sum(xb) / n if n else None
    delta = (agree_b - agree_a) if n else None  # type: ignore[operator]
    a_only = sum(1 for va, vb in zip(xa, xb, strict=True) if va == 1.0 and vb < 1.0)
    b_only = sum(1 for va, vb in zip(xa, xb, strict=True) if vb == 1.0 and va < 1.0)
    lo, hi = bootstrap_delta(xa, xb, seed=seed)
    ea = evaluate(dataset, a, ra, as_of=[as_of], scorer=scorer, now=now)
    eb = evaluate(dataset, b, rb, as_of=[as_of], scorer=scorer, now=now)
    classes = {c["class"]: c for c in ea["per_class"]}
    class_deltas = []
    for c in eb["per_class"]:
        old = classes.get(c["class"], {})
        class_deltas.append(
            {
                "class": c["class"],
                **{
                    f"{m}_delta": (
                        round(c[m] - old[m], 6)
                        if c.get(m) is not None and old.get(m) is not None
                        else None
                    )
                    for m in ("precision", "recall", "accuracy")
                },
            }
        )
    failures = []
    if max_regressions is not None and len(regressed) > max_regressions:
        failures.append(f"{len(regressed)} cases regressed (limit {max_regressions})")
    if max_drop is not None and delta is not None and delta < -max_drop:
        failures.append(f"agreement dropped by {-delta:.4f} (limit {max_drop})")
    return {
        "a": {"id": a.id, "name": a.name, "agent": a.agent},
        "b": {"id": b.id, "name": b.name, "agent": b.agent},
        "dataset": dataset.ref,
        "as_of": as_of,
        "scorer": scorer,
        "paired_cases": n,
        "agreement_a": None if agree_a is None else round(agree_a, 6),
        "agreement_b": None if agree_b is None else round(agree_b, 6),
        "delta": None if delta is None else round(delta, 6),
        "delta_ci": [lo, hi],
        "mcnemar_p": mcnemar_exact(a_only, b_only),
        "fixed": fixed,
        "regressed": regressed,
        "per_class": class_deltas,
        "passed": not failures,
        "failures": failures,
    }
