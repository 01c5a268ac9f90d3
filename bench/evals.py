"""Benchmark evaluation: an experiment of 10,000 cases, and scoring + report of 100,000.

    python bench/evals.py                          # both parts, the issue's sizes
    python bench/evals.py --cases 2000 --score-cases 20000   # quicker

(a) ``tether.evals.run_experiment`` on a fresh SQLite store (full durability) with an
    agent that awaits ``asyncio.sleep(0.1)`` (I/O, not CPU), at several concurrencies.
    Beside each: the ideal time if only the sleeps counted, ``cases * 0.1 / concurrency``.
    Target: 10,000 cases under 60 s end to end (dataset stored, every case run through the
    harness: task, input, run, step, ledger entries, result row).
(b) scoring under three as-of times (decision, latest, 30d) plus metrics, age curve,
    worst cases and both reports (HTML and Markdown with plots) for 100,000 cases with
    maturing labels, beside a plain pandas computation of the same two agreements
    (``merge_asof`` of decision times onto label observations). Target: under 10 s.
    The agreements of both must be equal (checked).
Results: docs/benchmarks.md, "Evaluation".
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tether
from tether.evals import save_dataset
from tether.evals.models import Case, Dataset, Experiment, LabelObservation, Result
from tether.evals.runner import run_experiment
from tether.graph.registry import build

DAY = 86400.0


@tether.agent
async def waits(ctx: tether.Context) -> dict[str, Any]:
    """Waits 100 ms on I/O, then decides."""
    await asyncio.sleep(0.1)
    return {"decision": ctx.input["n"] % 2 == 0, "cost": 0.001}


def experiment(cases: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = tether.Store.open(f"sqlite:///{tmp}/tether.db")
        try:
            ds = Dataset(
                name="bench",
                cases=tuple(
                    Case(f"k{i}", {"n": i}, None, (LabelObservation(i % 3 == 0, 1.0),))
                    for i in range(cases)
                ),
            )
            began = time.perf_counter()
            saved = save_dataset(store, ds)
            stats = run_experiment(
                store, build([waits]), saved, "waits", name="bench", concurrency=concurrency
            )
            seconds = time.perf_counter() - began
        finally:
            store.close()
    assert stats.succeeded == cases, stats
    ideal = cases * 0.1 / concurrency
    return {
        "cases": cases,
        "concurrency": concurrency,
        "seconds": seconds,
        "ideal": ideal,
        "per_second": cases / seconds,
    }


def scoring_data(n: int, seed: int = 1) -> tuple[Dataset, list[Result]]:
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    cases, results = [], []
    for i in range(n):
        decided = t0 + rng.uniform(0, 200) * DAY
        first = rng.random() < 0.1
        labels = [LabelObservation(first, decided)]
        if rng.random() < 0.3:  # a label that matures: flips some days later
            labels.append(LabelObservation(not first, decided + rng.uniform(1, 90) * DAY))
        cases.append(Case(f"c{i}", {"i": i}, decided, tuple(labels)))
        decision = labels[-1].value if rng.random() < 0.8 else not labels[-1].value
        results.append(
            Result(
                f"c{i}",
                "succeeded",
                decision,
                {"decision": decision},
                None,
                0.001,
                0.1,
                decided + 1,
                i + 1,
                i + 1,
            )
        )
    return Dataset(name="scoring", cases=tuple(cases)), results


def pandas_baseline(ds: Dataset, results: list[Result]) -> tuple[float, dict[str, float]]:
    import pandas as pd

    began = time.perf_counter()
    obs = pd.DataFrame(
        [(c.key, o.observed_at, o.value) for c in ds.cases for o in c.labels],
        columns=["key", "t", "label"],
    ).sort_values("t")
    dec = pd.DataFrame([(c.key, c.decided_at) for c in ds.cases], columns=["key", "t"]).sort_values(
        "t"
    )
    decisions = pd.Series({r.case_key: r.decision for r in results}, name="decision")
    at_decision = pd.merge_asof(dec, obs, on="t", by="key").dropna(subset=["label"])
    at_decision = at_decision.join(decisions, on="key")
    latest = obs.groupby("key").last().join(decisions)
    out = {
        "decision": float((at_decision["label"] == at_decision["decision"]).mean()),
        "latest": float((latest["label"] == latest["decision"]).mean()),
    }
    return time.perf_counter() - began, out


def scoring(n: int) -> dict[str, Any]:
    from tether.evals import report
    from tether.evals.evaluation import evaluate

    ds, results = scoring_data(n)
    exp = Experiment(1, "bench", "agent", 1, {}, 0.0, None)
    now = 1_700_000_000.0 + 400 * DAY
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        ev = evaluate(ds, exp, results, as_of=["decision", "latest", "30d"], now=now)
        scored = time.perf_counter() - began
        svgs = report.plots(ev)
        Path(tmp, "r.html").write_text(report.html_page(ev, svgs=svgs))
        report.markdown(ev, Path(tmp, "r.md"), svgs=svgs)
        total = time.perf_counter() - began
    base_seconds, base = pandas_baseline(ds, results)
    for k in ("decision", "latest"):
        assert abs(ev["as_of"][k]["agreement"] - base[k]) < 1e-6, (k, ev["as_of"][k], base[k])
    return {
        "cases": n,
        "score_seconds": scored,
        "total_seconds": total,
        "pandas_seconds": base_seconds,
        "agreement": {k: ev["as_of"][k]["agreement"] for k in ("decision", "latest", "30d")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 250, 500])
    parser.add_argument("--score-cases", type=int, default=100_000)
    parser.add_argument("--only", choices=["experiment", "scoring"], default=None)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    if args.only != "scoring":
        print("\n(a) experiment: agent awaits 100 ms; SQLite, full durability")
        print(
            f"{'cases':>7} {'conc.':>6} {'seconds':>8} {'ideal s':>8} {'ratio':>6} {'cases/s':>8}"
        )
    for c in args.concurrency if args.only != "scoring" else []:
        r = experiment(args.cases, c)
        print(
            f"{r['cases']:>7} {c:>6} {r['seconds']:>8.2f} {r['ideal']:>8.2f} "
            f"{r['seconds'] / r['ideal']:>6.2f} {r['per_second']:>8.0f}"
        )
    if args.only == "experiment":
        return
    print("\n(b) scoring (3 as-of times, metrics, age curve) + HTML and Markdown reports")
    s = scoring(args.score_cases)
    print(f"{'cases':>7} {'score s':>8} {'+report s':>9} {'pandas s':>8}  agreement")
    print(
        f"{s['cases']:>7} {s['score_seconds']:>8.2f} {s['total_seconds']:>9.2f} "
        f"{s['pandas_seconds']:>8.2f}  {s['agreement']}"
    )


if __name__ == "__main__":
    main()
