"""Synthetic reviewed runs with a known difficulty signal (benchmarks, tests, the guide).

Each case has a ``difficulty`` in [0, 1] visible to the harness through the output's
``confidence`` field (1 - difficulty, plus noise) and a ``kind`` category; the chance the
output is correct is :func:`p_correct`. The realised precision of any routing threshold on
fresh cases can therefore be measured, not assumed.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert, select

from tether.store import Store
from tether.store.schema import runs, tasks
from tether.store.schema_review import reviews
from tether.store.statements import RUN_FIELDS

KINDS = ("auto", "home", "life", "travel")
_KIND_PENALTY = {"auto": 0.0, "home": 0.05, "life": 0.12, "travel": 0.02}


def p_correct(difficulty: Any, kind: Any) -> Any:
    """The probability that the agent's output is correct for a case."""
    import numpy as np

    penalty = np.vectorize(_KIND_PENALTY.get)(kind)
    return np.clip(1.0 - 0.45 * np.asarray(difficulty) ** 2 - penalty, 0.0, 1.0)


def cases(n: int, seed: int) -> dict[str, Any]:
    """``n`` fresh cases: their outputs and whether each output is correct."""
    import numpy as np

    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0, 1, n)
    kind = rng.choice(KINDS, n)
    correct = rng.uniform(0, 1, n) < p_correct(difficulty, kind)
    confidence = np.clip(1.0 - difficulty + rng.normal(0, 0.05, n), 0, 1)
    outputs = [
        {"confidence": round(float(c), 4), "kind": str(k), "amount": int(a)}
        for c, k, a in zip(confidence, kind, rng.integers(100, 5000, n), strict=True)
    ]
    return {"outputs": outputs, "correct": correct, "difficulty": difficulty}


def seed_reviewed(
    store: Store, agent: str, n: int, *, seed: int = 0, start: float | None = None,
    key_prefix: str = "case", chunk: int = 5000,
) -> list[int]:
    """Write ``n`` finished, reviewed runs of ``agent`` straight into the store (fast bulk
    inserts: a stand-in for months of reviewed traffic). Returns the run ids."""
    data = cases(n, seed)
    t0 = time.time() - 86400 if start is None else start
    run_ids: list[int] = []
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)

        def body(conn: Any, lo: int = lo, hi: int = hi) -> list[int]:
            keys = [f"{key_prefix}-{seed}-{i}" for i in range(lo, hi)]
            conn.execute(insert(tasks), [
                {"agent": agent, "key": k, "created_at": t0 + i} for i, k in enumerate(keys, lo)
            ])
            ids = dict(conn.execute(
                select(tasks.c.key, tasks.c.id).where(tasks.c.agent == agent,
                                                      tasks.c.key.in_(keys))
            ).all())
            recorded = conn.execute(insert(runs).returning(*RUN_FIELDS), [
                {"task_id": ids[k], "attempt": 1, "reason": "submitted", "status": "succeeded",
                 "output": data["outputs"][i], "created_at": t0 + i, "available_at": t0 + i,
                 "started_at": t0 + i, "finished_at": t0 + i + 0.5, "worker": "synthetic"}
                for i, k in enumerate(keys, lo)
            ]).all()
            # Into each task's hash chain like any recorded run, so `tether verify` holds.
            store._append_many(conn, [(r.task_id, [("run", dict(r._mapping))], r.finished_at)
                                      for r in recorded])
            found = {r.task_id: r.id for r in recorded}
            reviewed = conn.execute(insert(reviews).returning(*reviews.c), [
                {"run_id": found[ids[k]], "task_id": ids[k], "agent": agent,
                 "verdict": "correct" if data["correct"][i] else "incorrect",
                 "reason": None if data["correct"][i] else "wrong",
                 "corrected_output": None, "reviewer": "synthetic",
                 "created_at": t0 + i + 1}
                for i, k in enumerate(keys, lo)
            ]).all()
            # Reviews are in the chain too (tether/review), so `tether verify` still holds.
            store._append_many(conn, [(r.task_id, [("review", dict(r._mapping))], r.created_at)
                                      for r in reviewed])
            return [found[ids[k]] for k in keys]

        run_ids.extend(store._transact(body))
    return run_ids
