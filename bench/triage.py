"""Benchmark the production bar: training on 100,000 reviewed runs, and scoring one run.

    .venv/bin/python bench/triage.py [--runs 100000] [--score 5000]

Training is timed end to end as ``tether triage train`` does it: load the reviewed runs
from a SQLite store, build features, fit LightGBM, choose the threshold with MAPIE's
learn-then-test, save the model. Scoring is timed per run as the in-run ``triage`` step
does it (features from the output, the cached booster, one row), beside the baseline of a
plain ``booster.predict`` on a prebuilt one-row array. Targets: train < 30 s, score < 2 ms
median.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import tether
from tether.runtime.context import Context, StepRecorder
from tether.store import Store
from tether.store.writes import Claim
from tether.triage import set_bar
from tether.triage.enforce import Triage
from tether.triage.features import RunView, raw_features
from tether.triage.synthetic import cases, seed_reviewed
from tether.triage.train import train


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--score", type=int, default=5_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{Path(tmp) / 'bench.db'}")
        t = time.perf_counter()
        seed_reviewed(store, "quote", args.runs, seed=11, chunk=10_000)
        seeded = time.perf_counter() - t
        set_bar(store, "quote", target=0.95, confidence=0.95, by="bench")
        import lightgbm  # noqa: F401  (import cost is not training cost)
        import mapie.risk_control  # noqa: F401
        stages: list[tuple[str, float]] = []
        t = time.perf_counter()
        model = train(store, None, "quote",
                      progress=lambda m: stages.append((m, time.perf_counter())))
        total = time.perf_counter() - t
        marks = [*stages, ("saved", t + total)]
        phases = [(a[0].split(" on ")[0], b[1] - a[1]) for a, b in itertools.pairwise(marks)]

        fresh = cases(args.score, seed=12)
        view = RunView("quote", "k", None, 1)
        booster = model.booster()
        row0 = raw_features(None, view, fresh["outputs"][0], steps=1, attempt=1, latency=0.5)
        X1 = np.asarray([model.spec.vector(row0)], dtype=float)
        for _ in range(200):  # warm both paths
            model.score(row0)
            booster.predict(X1, num_threads=1)
        ours: list[float] = []
        for out in fresh["outputs"]:
            s = time.perf_counter()
            row = raw_features(None, view, out, steps=1, attempt=1, latency=0.5)
            model.score(row)
            ours.append((time.perf_counter() - s) * 1000)
        base: list[float] = []
        for _ in range(args.score):
            s = time.perf_counter()
            booster.predict(X1, num_threads=1)
            base.append((time.perf_counter() - s) * 1000)
        # The whole in-run step as the executor calls it: bar/model lookup (cached), the
        # `triage` step recorded through the run's StepRecorder, features, score.
        set_bar(store, "quote", target=0.95, confidence=0.95, by="bench", rollout_rate=0.0)
        train(store, None, "quote")  # a model for the current bar
        triage = Triage(store, ttl=3600)
        agent = tether.agent(name="quote")(lambda ctx: None)
        claim = Claim(run_id=1, task_id=1, agent="quote", key="k", attempt=1,
                      reason="submitted", note=None, lease_expires_at=time.time() + 60)
        easy = [o for o, c in zip(fresh["outputs"], fresh["correct"], strict=True)
                if o["confidence"] > 0.97 and o["kind"] == "auto"][:500]
        step_ms: list[float] = []
        for i in range(args.score):
            recorder = StepRecorder(store, 1, 1)
            ctx = Context(claim, store=store, recorder=recorder)
            out = easy[i % len(easy)]
            s = time.perf_counter()
            triage.check(agent, ctx, out, steps=1, started=time.time() - 0.5)
            step_ms.append((time.perf_counter() - s) * 1000)
            recorder.drain()
        store.close()

    print(f"machine: {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    print(f"seeded {args.runs:,} reviewed runs in {seeded:.1f} s (not part of training)")
    print(f"model: threshold {model.threshold}, automated share "
          f"{model.automated_share:.1%}, held-out AUC {model.metrics['calibration_auc']:.3f}")
    print()
    print(f"{'training (' + format(args.runs, ',') + ' reviewed runs)':<44} {'seconds':>8}")
    for name, secs in phases:
        print(f"  {name:<42} {secs:>8.2f}")
    print(f"  {'total (target < 30 s)':<42} {total:>8.2f}")
    print()
    print(f"{'scoring one run (' + format(args.score, ',') + ' runs)':<44} "
          f"{'median ms':>9} {'p99 ms':>8}")
    print(f"  {'triage step: features + cached booster':<42} "
          f"{statistics.median(ours):>9.3f} {_pct(ours, 99):>8.3f}")
    print(f"  {'whole triage step in a run (automated)':<42} "
          f"{statistics.median(step_ms):>9.3f} {_pct(step_ms, 99):>8.3f}")
    print(f"  {'baseline: booster.predict on a ready row':<42} "
          f"{statistics.median(base):>9.3f} {_pct(base, 99):>8.3f}")


if __name__ == "__main__":
    main()
