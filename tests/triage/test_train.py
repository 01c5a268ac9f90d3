"""Training the triage model and choosing the threshold against the bar."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from tether import Store
from tether.store.schema_triage import triage_models
from tether.triage import TriageError, audit_entries, set_bar
from tether.triage.features import RunView, raw_features
from tether.triage.synthetic import cases, seed_reviewed
from tether.triage.train import train


def _fresh_scores(model, n: int, seed: int):
    fresh = cases(n, seed)
    view = RunView("quote", "k", None, 1)
    rows = [raw_features(None, view, o, steps=0, attempt=1, latency=0.5)
            for o in fresh["outputs"]]
    return model.score_rows(rows), fresh["correct"]


@pytest.mark.parametrize(("target", "confidence"), [(0.9, 0.9), (0.93, 0.95)])
def test_realised_precision_on_fresh_data_meets_the_bar(
    store: Store, target: float, confidence: float
) -> None:
    seed_reviewed(store, "quote", 4000, seed=3)
    set_bar(store, "quote", target=target, confidence=confidence, by="maria")
    model = train(store, None, "quote")
    assert model.threshold is not None
    assert 0.05 < model.automated_share < 1.0  # a real trade-off, not all or nothing
    scores, correct = _fresh_scores(model, 30000, seed=77)
    automated = scores >= model.threshold
    assert correct[automated].mean() >= target
    # and it automates a share close to what it promised on the held-out runs
    assert abs(automated.mean() - model.automated_share) < 0.05
    # the threshold is the lowest that met the bar: the next lower one did not
    curve = model.metrics["curve"]
    lower = [c for c in curve if c["threshold"] < model.threshold]
    assert lower and not lower[-1]["meets_bar"]
    assert model.trained_on["rows"] == 4000 and model.trained_on["reviewed_runs"] == 4000
    assert audit_entries(store, "agent:quote")[-1].action == "triage.train"


def test_unreachable_bar_sends_everything_to_review(store: Store) -> None:
    seed_reviewed(store, "quote", 1500, seed=4)
    set_bar(store, "quote", target=0.999, confidence=0.99, by="maria")
    model = train(store, None, "quote")
    assert model.threshold is None and model.automated_share == 0.0
    with store.engine.connect() as conn:
        assert conn.execute(select(triage_models.c.threshold)).scalar() is None


def test_training_is_reproducible_and_versions_its_data(store: Store) -> None:
    seed_reviewed(store, "quote", 1500, seed=5)
    set_bar(store, "quote", target=0.9, confidence=0.9, by="maria")
    a = train(store, None, "quote")
    b = train(store, None, "quote")
    assert a.id != b.id and a.threshold == b.threshold and a.trained_on == b.trained_on
    seed_reviewed(store, "quote", 10, seed=6, key_prefix="more")
    c = train(store, None, "quote")
    assert c.trained_on["rows"] == 1510
    assert c.trained_on["max_review_id"] > a.trained_on["max_review_id"]
    assert c.trained_on["hash"] != a.trained_on["hash"]


def test_extra_labelled_records_feed_training(store: Store) -> None:
    set_bar(store, "quote", target=0.9, confidence=0.9, by="maria")
    fresh = cases(800, seed=8)
    extra = [{"output": o, "correct": bool(c)}
             for o, c in zip(fresh["outputs"], fresh["correct"], strict=True)]
    model = train(store, None, "quote", extra=extra)
    assert model.trained_on["rows"] == 800 and model.trained_on["reviewed_runs"] == 0
    with pytest.raises(TriageError, match="needs 'output' and 'correct'"):
        train(store, None, "quote", extra=[{"output": {}}])


def test_clear_errors_without_bar_or_data(store: Store) -> None:
    with pytest.raises(TriageError, match="no production bar; set one first"):
        train(store, None, "quote")
    set_bar(store, "quote", target=0.9, confidence=0.9, by="maria")
    with pytest.raises(TriageError, match="0 reviewed runs; at least"):
        train(store, None, "quote")
    ones = [{"output": {"confidence": float(i)}, "correct": True} for i in range(100)]
    with pytest.raises(TriageError, match="needs both kinds"):
        train(store, None, "quote", extra=ones)
    assert np.isfinite(1.0)
