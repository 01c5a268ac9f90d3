"""As-of scoring, scorers and metrics against hand-computed values."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tether.evals.evaluation import evaluate
from tether.evals.models import Case, Dataset, Experiment, LabelObservation, Result
from tether.evals.scorers import ScorerError, exact, numeric, resolve
from tether.evals.scoring import AsOf, parse_duration

D = 86400.0
T0 = 1_700_000_000.0
NOW = T0 + 100 * D
EXP = Experiment(1, "e", "agent", 1, {}, T0, None)


def obs(value: Any, day: float) -> LabelObservation:
    return LabelObservation(value, T0 + day * D)


DATASET = Dataset(
    name="fraud",
    cases=(
        Case("a", {}, T0, (obs("legit", 1), obs("fraud", 40))),
        Case("b", {}, T0, (obs("legit", 0),)),
        Case("c", {}, T0, (obs("fraud", 10),)),
        Case("d", {}, T0 + 95 * D, (obs("legit", 95),)),
        Case("e", {}, None, (obs("fraud", -5),)),
        Case("f", {}, T0, (obs("legit", 1),)),
        Case("g", {}, T0, ()),
    ),
)


def result(key: str, decision: Any, *, error: str | None = None, at: float = NOW) -> Result:
    return Result(key, "succeeded", decision, {"decision": decision}, error, 0.1, 0.2, at, 1, 1)


RESULTS = [
    result("a", "fraud"),
    result("b", "legit"),
    result("c", "legit"),
    result("d", "legit"),
    result("e", "fraud"),
    result("f", None, error="terminal: upstream API down"),
    result("g", "fraud"),
]


def wilson(k: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return evaluate(DATASET, EXP, RESULTS, as_of=["latest", "decision", "30d"], now=NOW)


def test_agreement_under_each_as_of_matches_hand_computation(report: dict[str, Any]) -> None:
    decision, latest, window = (report["as_of"][k] for k in ("decision", "latest", "30d"))
    # decision: a, c, g had no label yet; b, d, e right.
    assert (decision["scored"], decision["agreement"], decision["unlabeled"]) == (3, 1.0, 3)
    # latest: a right (fraud matured), b right, c wrong, d right, e right.
    assert (latest["scored"], latest["agreement"], latest["incorrect"]) == (5, 0.8, 1)
    # 30 days after: a still legit (wrong), b right, c wrong; d and e are younger than 30 days.
    assert (window["scored"], window["agreement"]) == (3, round(1 / 3, 6))
    assert (window["immature"], window["immature_agreement"]) == (2, 1.0)
    for s in (decision, latest, window):
        assert s["errors"] == 1 and s["missing"] == 0
    assert report["maturation_gap"] == {"latest": -0.2, "30d": round(1 / 3 - 1, 6)}
    lo, hi = wilson(4, 5)
    assert latest["ci_low"] == pytest.approx(lo, abs=1e-6)
    assert latest["ci_high"] == pytest.approx(hi, abs=1e-6)


def test_per_class_metrics_and_confusion(report: dict[str, Any]) -> None:
    assert report["primary"] == "latest"
    classes = {c["class"]: c for c in report["per_class"]}
    fraud, legit = classes["fraud"], classes["legit"]
    assert (fraud["precision"], fraud["recall"], fraud["accuracy"]) == (1.0, round(2 / 3, 6), 0.8)
    assert (legit["precision"], legit["recall"], legit["support"]) == (round(2 / 3, 6), 1.0, 2)
    lo, hi = wilson(2, 3)
    assert fraud["recall_ci"] == [pytest.approx(lo, abs=1e-6), pytest.approx(hi, abs=1e-6)]
    assert report["confusion"] == {"fraud": {"fraud": 2, "legit": 1}, "legit": {"legit": 2}}


def test_agreement_against_label_age(report: dict[str, Any]) -> None:
    curve = {p["age_days"]: p for p in report["age_curve"]}
    assert set(curve) == {0.0, round(1 / 24, 4), 1.0, 7.0, 14.0, 30.0, 40.0}
    assert curve[0.0]["agreement"] == 1.0 and curve[0.0]["scored"] == 3
    # 40 days on, only a, b, c are old enough: a right, b right, c wrong.
    assert (curve[40.0]["scored"], curve[40.0]["agreement"]) == (3, round(2 / 3, 6))


def test_worst_cases_and_errors_are_kept_apart(report: dict[str, Any]) -> None:
    assert [w["key"] for w in report["worst_cases"]] == ["c"]
    assert report["worst_cases"][0]["reason"] == "decided 'legit', label 'fraud'"
    assert report["errors"] == [{"key": "f", "error": "terminal: upstream API down"}]
    assert report["cost"]["total"] == pytest.approx(0.7)  # 7 results at 0.1


def test_maturity_window_sets_immature_cases_apart() -> None:
    rep = evaluate(DATASET, EXP, RESULTS, as_of=["latest"], maturity="10d", now=NOW)
    latest = rep["as_of"]["latest"]
    # d (5 days old) and e (decided now) are immature.
    assert (latest["scored"], latest["immature"], latest["agreement"]) == (3, 2, round(2 / 3, 6))


def test_scorers() -> None:
    assert exact("x", "x").verdict == "correct"
    assert exact(True, 1).verdict == "incorrect"
    assert numeric(0.5)(1.4, 1.0, None).verdict == "correct"
    assert numeric(0.5)(1.6, 1.0, None).verdict == "incorrect"
    assert resolve("numeric:10%")(105, 100, None).verdict == "correct"
    assert resolve("numeric:10%")(111, 100, None).verdict == "incorrect"
    custom = resolve("tests.evals.scorer_examples:amount_verdict")
    v = custom({"class": "a", "amount": 2}, {"class": "a", "amount": 3}, None)
    assert (v.verdict, v.score, v.reason) == ("partial", 0.25, "amount 2 is not 3")
    v = custom({"class": "b", "amount": 2}, {"class": "a", "amount": 2}, None)
    assert (v.verdict, v.reason) == ("incorrect", "class b is not a")
    with pytest.raises(ScorerError, match="cannot import"):
        resolve("tests.evals.scorer_examples:nope")


def test_custom_verdict_scorer_and_a_failing_scorer_in_a_report() -> None:
    ds = Dataset(
        name="amounts",
        cases=(
            Case("x", {}, T0, (obs({"class": "a", "amount": 3}, 0),)),
            Case("y", {}, T0, (obs({"class": "a", "amount": 3}, 0),)),
        ),
    )
    found = [result("x", {"class": "a", "amount": 3}), result("y", {"class": "a", "amount": 1})]
    rep = evaluate(ds, EXP, found, scorer="tests.evals.scorer_examples:amount_verdict", now=NOW)
    s = rep["as_of"]["decision"]
    assert (s["correct"], s["partial"], s["agreement"]) == (1, 1, 0.625)
    broken = evaluate(ds, EXP, found, scorer="tests.evals.scorer_examples:broken", now=NOW)
    assert broken["as_of"]["decision"]["errors"] == 2
    assert broken["as_of"]["decision"]["scored"] == 0
    assert "scorer failed: RuntimeError: boom" in broken["errors"][0]["error"]


def test_as_of_parsing() -> None:
    assert AsOf.parse("30d").window == 30 * D
    assert parse_duration("12h") == 12 * 3600
    assert AsOf.parse("Latest").mode == "latest"
    with pytest.raises(Exception, match="use decision, latest or a duration"):
        AsOf.parse("soon")


@pytest.mark.parametrize(("k", "n"), [(0, 5), (4, 5), (5, 5), (2.5, 7), (731, 1000), (1, 1)])
def test_wilson_equals_statsmodels(k: float, n: int) -> None:
    from statsmodels.stats.proportion import proportion_confint

    from tether.evals.scoring import wilson as ours

    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert ours(k, n) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
