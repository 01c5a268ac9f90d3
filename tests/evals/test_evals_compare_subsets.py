"""Compare flags planted regressions and gates; subsets are balanced, biased, reproducible."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import tether
from tether import Store
from tether.evals import save_dataset
from tether.evals.compare import bootstrap_delta, compare, mcnemar_exact
from tether.evals.models import Case, Dataset, LabelObservation
from tether.evals.runner import run_experiment
from tether.evals.subsets import allocate, draw_subset, stubborn_counts
from tether.graph.registry import build

FIXED = {"k3", "k7"}
REGRESSED = {"k1", "k4", "k9"}


def labelled(n: int) -> Dataset:
    # Label flips as it matures for k0: the latest label is what counts below.
    cases = [Case(f"k{i}", {"n": i}, 0.0, (LabelObservation(i % 3 == 0, 10.0),)) for i in range(n)]
    cases[0] = Case(
        "k0", {"n": 0}, 0.0, (LabelObservation(False, 5.0), LabelObservation(True, 9.0))
    )
    return Dataset(name="claims", cases=tuple(cases))


@tether.agent
def v1(ctx: tether.Context) -> dict[str, Any]:
    n = ctx.input["n"]
    right = n % 3 == 0
    return {"decision": (not right) if f"k{n}" in FIXED else right}


@tether.agent
def v2(ctx: tether.Context) -> dict[str, Any]:
    n = ctx.input["n"]
    right = n % 3 == 0
    return {"decision": (not right) if f"k{n}" in REGRESSED else right}


@pytest.fixture
def experiments(store: Store) -> Store:
    ds = save_dataset(store, labelled(30))
    graph = build([v1, v2])
    run_experiment(store, graph, ds, "v1", name="base")
    run_experiment(store, graph, ds, "v2", name="cand")
    return store


def test_compare_flags_planted_regressions_and_fixes(experiments: Store) -> None:
    out = compare(experiments, "base", "cand")
    assert {r["key"] for r in out["regressed"]} == REGRESSED
    assert {r["key"] for r in out["fixed"]} == FIXED
    assert out["paired_cases"] == 30
    assert out["agreement_a"] == round(28 / 30, 6) and out["agreement_b"] == round(27 / 30, 6)
    assert out["delta"] == round(-1 / 30, 6)
    assert out["mcnemar_p"] == pytest.approx(1.0)  # 2 vs 3 discordant: no evidence
    lo, hi = out["delta_ci"]
    assert lo < out["delta"] < hi
    assert out["passed"]


def test_compare_gates_on_limits(experiments: Store) -> None:
    assert not compare(experiments, "base", "cand", max_regressions=2)["passed"]
    assert compare(experiments, "base", "cand", max_regressions=3)["passed"]
    gated = compare(experiments, "base", "cand", max_drop=0.02)
    assert gated["failures"] == ["agreement dropped by 0.0333 (limit 0.02)"]
    assert compare(experiments, "base", "cand", max_drop=0.05)["passed"]


def test_mcnemar_and_bootstrap_values() -> None:
    # Exact McNemar: two-sided binomial test of 0 successes out of 6 at p = 0.5.
    assert mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6)
    assert mcnemar_exact(0, 0) == 1.0
    lo, hi = bootstrap_delta([0, 0, 0, 0], [1, 1, 1, 1])
    assert (lo, hi) == (1.0, 1.0)
    assert bootstrap_delta([1, 0] * 50, [1, 0] * 50, seed=3) == bootstrap_delta(
        [1, 0] * 50, [1, 0] * 50, seed=3
    )


def test_allocation_is_equal_and_capped() -> None:
    assert allocate({"a": 100, "b": 30, "c": 10}, 30) == {"a": 10, "b": 10, "c": 10}
    got = allocate({"a": 100, "b": 30, "c": 10}, 45)
    assert got["c"] == 10 and sum(got.values()) == 45 and abs(got["a"] - got["b"]) <= 1
    assert allocate({"a": 2, "b": 1}, 10) == {"a": 2, "b": 1}


def skewed() -> Dataset:
    cases = []
    for i in range(300):
        label = "fraud" if i < 30 else "legit"
        cases.append(Case(f"c{i}", {"i": i}, None, (LabelObservation(label, 1.0),)))
    return Dataset(name="skewed", cases=tuple(cases))


def test_subset_is_label_balanced_and_reproducible() -> None:
    ds = skewed()
    sub = draw_subset(ds, size=40, seed=7)
    per = Counter(c.latest.value for c in sub.cases)  # type: ignore[union-attr]
    assert per == {"fraud": 20, "legit": 20}
    assert sub.parent == "skewed" and sub.name == "skewed-subset"
    assert [c.key for c in draw_subset(ds, size=40, seed=7).cases] == [c.key for c in sub.cases]
    assert [c.key for c in draw_subset(ds, size=40, seed=8).cases] != [c.key for c in sub.cases]


def test_subset_is_weighted_toward_stubborn_failures() -> None:
    ds = skewed()
    stubborn = {f"c{i}": 3 for i in range(30, 60)}  # 30 of 270 legit cases keep failing
    hits = unweighted = 0
    for seed in range(20):
        keys = {c.key for c in draw_subset(ds, size=40, seed=seed, stubborn=stubborn).cases}
        hits += len(keys & set(stubborn))
        plain = {c.key for c in draw_subset(ds, size=40, seed=seed, stubborn_weight=0).cases}
        unweighted += len(plain & set(stubborn))
    # 20 legit picks out of 270 hold ~2.2 stubborn cases by chance; weight 1 + 4*3 = 13.
    assert unweighted / 20 < 4
    assert hits / 20 > 10


def test_stubborn_counts_come_from_recent_experiments(experiments: Store) -> None:
    from tether.evals import get_dataset

    ds = get_dataset(experiments, "claims")
    counts = stubborn_counts(experiments, ds)
    assert counts == {**dict.fromkeys(FIXED, 1), **dict.fromkeys(REGRESSED, 1)}
    assert stubborn_counts(experiments, ds, agent="v2") == dict.fromkeys(REGRESSED, 1)
