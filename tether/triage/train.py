"""``tether triage train``: fit the triage model and choose the routing threshold.

A LightGBM classifier learns P(output correct) from reviewed runs. The reviewed rows are
split (reproducibly) into a training part and a held-out calibration part; on the latter
MAPIE's :class:`~mapie.risk_control.BinaryClassificationController` (learn-then-test) finds
every threshold whose automated share's precision meets the bar at the bar's confidence;
the lowest such threshold (the largest automated share) is chosen. When none qualifies the
model is saved with no threshold: every run goes to review, and the report says so.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert

from tether.graph.registry import Graph
from tether.store import Store
from tether.store.schema_triage import triage_models
from tether.triage.bars import Bar, get_bar, record_audit
from tether.triage.data import TrainingData, add_records, reviewed_runs
from tether.triage.errors import TriageError, require
from tether.triage.features import FeatureSpec
from tether.triage.models import TriageModel, latest_model

MIN_ROWS = 40
"""Fewer reviewed runs than this cannot both train a model and test a threshold."""

CALIBRATION_SHARE = 0.4
"""The share of reviewed runs held out to choose (and vouch for) the threshold."""

GRID_SIZE = 100
"""Thresholds tested by learn-then-test; each costs a little power (multiple testing)."""

LGB_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    # Small, regularised trees: review labels are noisy, and an overconfident model wastes
    # the held-out runs' power on thresholds it cannot vouch for.
    "num_leaves": 15,
    "min_data_in_leaf": 40,
    "lambda_l2": 1.0,
    "verbose": -1,
    "deterministic": True,
    # One thread: on small data LightGBM's threads cost more than they save (measured:
    # 0.3 s on one thread vs 16 s on two, on a busy 2-core machine).
    "num_threads": 1,
}
ROUNDS = 150

Progress = Callable[[str], None]


def grid() -> Any:
    """The thresholds tested: denser near 1, where high bars are met."""
    import numpy as np

    coarse = np.linspace(0.0, 0.9, 40, endpoint=False)
    fine = 1.0 - np.geomspace(0.1, 0.0005, GRID_SIZE - 40)
    return np.unique(np.concatenate([coarse, fine]))


def split(n: int, seed: int, calibration_share: float = CALIBRATION_SHARE) -> tuple[Any, Any]:
    """Reproducible (train, calibration) index arrays."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(n)
    n_cal = round(n * calibration_share)
    return np.sort(perm[n_cal:]), np.sort(perm[:n_cal])


def fit_booster(X: Any, y: Any, spec: FeatureSpec, seed: int) -> Any:
    """A LightGBM booster predicting P(correct)."""
    import lightgbm as lgb

    params = {**LGB_PARAMS, "seed": seed}
    ds = lgb.Dataset(X, label=y, categorical_feature=spec.categorical_indices or "auto",
                     feature_name=[f"f{i}" for i in range(X.shape[1])], free_raw_data=True)
    return lgb.train(params, ds, num_boost_round=ROUNDS)


def choose_threshold(scores: Any, y: Any, bar: Bar) -> dict[str, Any]:
    """Learn-then-test on held-out (score, label) pairs: the valid thresholds, the chosen
    one (largest automated share) and the Pareto curve (automation rate vs precision)."""
    import numpy as np
    from mapie.risk_control import BinaryClassificationController

    scores = np.asarray(scores, dtype=float)
    y = np.asarray(y, dtype=int)
    thresholds = grid()
    # A threshold no held-out run reaches has no precision at all (NaN), and one NaN p-value
    # voids MAPIE's whole multiple test; only the scores (not the labels) decide this.
    thresholds = thresholds[thresholds <= (scores.max() if len(scores) else 0.0)]
    proba = np.column_stack([1.0 - scores, scores])
    controller = BinaryClassificationController(
        predict_function=lambda X: proba[np.asarray(X, dtype=int).ravel()],
        risk="precision",
        target_level=float(bar.target),
        confidence_level=float(bar.confidence),
        list_predict_params=thresholds,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MAPIE warns when no threshold is valid: we report it
        controller.calibrate(np.arange(len(y)).reshape(-1, 1), y)
    valid = {float(t) for t in np.asarray(controller.valid_predict_params, dtype=float)}
    p_values = np.asarray(controller.p_values, dtype=float).reshape(len(thresholds), -1)[:, 0]
    curve = []
    for t, p in zip(thresholds, p_values, strict=True):
        auto = scores >= t
        n_auto = int(auto.sum())
        curve.append({
            "threshold": float(t),
            "automated_share": float(auto.mean()) if len(y) else 0.0,
            "precision": float(y[auto].mean()) if n_auto else None,
            "automated": n_auto,
            "p_value": float(p),
            "meets_bar": float(t) in valid,
        })
    chosen = min(valid) if valid else None
    return {"threshold": chosen, "curve": curve}


def train(
    store: Store,
    graph: Graph | None,
    agent: str,
    *,
    extra: Any = None,
    seed: int = 0,
    actor: str = "tether",
    now: float | None = None,
    progress: Progress | None = None,
) -> TriageModel:
    """Train ``agent``'s triage model on its reviewed runs (and ``extra`` labelled records),
    choose the threshold for its bar, and save it. Returns the saved model.

    Raises:
        TriageError: no bar is set, too few reviewed runs, or only one kind of verdict.
        MissingExtra: lightgbm / mapie are not installed.
    """
    for module in ("numpy", "lightgbm", "mapie"):
        require(module)
    import numpy as np

    say = progress or (lambda _msg: None)
    bar = get_bar(store, agent)
    if bar is None:
        raise TriageError(
            f"triage train {agent}: {agent!r} has no production bar; set one first with "
            f"`tether bar set {agent} --precision 0.98 --confidence 0.95`"
        )
    agent_obj = graph.agents.get(agent) if graph is not None else None
    say("loading reviewed runs")
    data: TrainingData = reviewed_runs(store, agent_obj, agent)
    if extra is not None:
        add_records(data, agent_obj, agent, extra)
    n = len(data.labels)
    if n < MIN_ROWS:
        raise TriageError(
            f"triage train {agent}: {n} reviewed runs; at least {MIN_ROWS} are needed "
            "(review more with `tether review`, or pass evaluation results)"
        )
    y = np.asarray(data.labels, dtype=int)
    if y.min() == y.max():
        raise TriageError(
            f"triage train {agent}: all {n} reviewed runs are "
            f"{'correct' if y[0] else 'not correct'}; the model needs both kinds"
        )
    say("building features")
    spec = FeatureSpec.learn(data.rows)
    X = np.asarray([spec.vector(r) for r in data.rows], dtype=float)
    tr, cal = split(n, seed)
    say(f"training LightGBM on {len(tr)} runs")
    booster = fit_booster(X[tr], y[tr], spec, seed)
    say(f"choosing the threshold on {len(cal)} held-out runs")
    cal_scores = booster.predict(X[cal])
    choice = choose_threshold(cal_scores, y[cal], bar)
    threshold = choice["threshold"]
    point = next((c for c in choice["curve"] if c["threshold"] == threshold), None)
    metrics = _metrics(y[cal], cal_scores, tr, cal, y)
    metrics["curve"] = choice["curve"]
    metrics["calibration_precision"] = point["precision"] if point else None
    metrics["calibration_p_value"] = point["p_value"] if point else None
    share = point["automated_share"] if point else 0.0
    when = time.time() if now is None else now
    text = booster.model_to_string()
    values = {
        "agent": agent, "created_at": when, "trained_on": data.version(),
        "features": spec.to_json(), "threshold": threshold, "automated_share": share,
        "metrics": metrics, "bar": bar.to_dict(), "model": text.encode(),
    }

    def body(conn: Any) -> int:
        model_id = int(conn.execute(
            insert(triage_models).values(**values).returning(triage_models.c.id)
        ).scalar_one())
        record_audit(conn, actor=actor, action="triage.train", subject=f"agent:{agent}",
                     at=when, detail={"model": model_id, "threshold": threshold,
                                      "automated_share": share, "bar": bar.id})
        return model_id

    store._transact(body)
    model = latest_model(store, agent)
    assert model is not None
    return model


def _metrics(y_cal: Any, scores: Any, tr: Any, cal: Any, y: Any) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    both = len(set(y_cal.tolist())) == 2
    return {
        "train_rows": len(tr),
        "calibration_rows": len(cal),
        "base_rate": float(y.mean()),
        "calibration_auc": float(roc_auc_score(y_cal, scores)) if both else None,
    }
