"""Builder-declared features reach the model: a signal only the declared feature carries
is learnt, both as a function of (ctx, output) and as field names."""

from __future__ import annotations

from typing import Any

import numpy as np

import tether
from tether.graph.registry import Graph
from tether.store import Store
from tether.triage import set_bar
from tether.triage.features import FeatureSpec, RunView, raw_features
from tether.triage.train import train


def _records(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    hidden = rng.uniform(0, 1, n)  # the difficulty, only in the input's "risk"
    correct = rng.uniform(0, 1, n) < 1.0 - 0.6 * hidden
    # nested, so only a declared feature reaches it (top-level fields are automatic)
    return [{"output": {"noise": float(rng.normal())}, "input": {"case": {"risk": float(h)}},
             "correct": bool(c)} for h, c in zip(hidden, correct, strict=True)]


def _agent(features: Any) -> tether.Agent:
    return tether.agent(name="quote", features=features)(lambda ctx: None)


def test_a_declared_feature_function_carries_a_signal_nothing_else_has(store: Store) -> None:
    set_bar(store, "quote", target=0.9, confidence=0.9, by="maria")
    blind = train(store, None, "quote", extra=_records(3000, 1))
    assert blind.metrics["calibration_auc"] < 0.6 and blind.threshold is None
    agent = _agent(lambda ctx, out: {"risk": ctx.input["case"]["risk"]})
    model = train(store, Graph({"quote": agent}), "quote", extra=_records(3000, 1))
    assert "feat.risk" in model.spec.columns
    assert model.metrics["calibration_auc"] > 0.65
    assert model.threshold is not None


def test_declared_field_names_are_features(store: Store) -> None:
    set_bar(store, "quote", target=0.9, confidence=0.9, by="maria")
    records = [{**r, "output": {**r["output"], "band": "hi" if i % 2 else "lo"}}
               for i, r in enumerate(_records(200, 2))]
    model = train(store, Graph({"quote": _agent(["band", "noise"])}), "quote", extra=records)
    assert {"feat.band", "feat.noise"} <= set(model.spec.columns)
    assert model.spec.categories["feat.band"] in (("hi", "lo"), ("lo", "hi"))


def test_feature_spec_keeps_categories_and_drops_free_text() -> None:
    rows = [raw_features(None, RunView("a", "k", None, 1),
                         {"kind": k, "note": f"free text {i}", "n": i, "ok": True,
                          "items": [1, 2]},
                         steps=2, attempt=2, latency=0.1)
            for i, k in enumerate(["x", "y"] * 40)]
    spec = FeatureSpec.learn(rows)
    assert "out.note" not in spec.columns  # 80 distinct strings: free text, not a feature
    assert {"out.kind", "out.n", "out.ok", "out.items.len", "harness.retries"} <= set(
        spec.columns)
    back = FeatureSpec.from_json(spec.to_json())
    v = back.vector({"out.kind": "unseen", "out.n": 3.0})
    assert np.isnan(v[back.columns.index("out.kind")])
    assert v[back.columns.index("out.n")] == 3.0
