"""Saved triage models: the latest per agent, loaded once per model id, scored fast."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from tether.store import Store
from tether.store.schema_triage import triage_models
from tether.triage.features import FeatureSpec

# Loaded boosters by (store url, model id): parsing a model string takes milliseconds, a
# run's scoring budget is under 2 ms, so a model is parsed once per process.
_CACHE: dict[tuple[str, int], Any] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class TriageModel:
    """A trained triage model: its routing threshold and what it was trained on."""

    id: int
    agent: str
    created_at: float
    trained_on: dict[str, Any]
    spec: FeatureSpec
    threshold: float | None
    """Runs scoring at or above it are automated; None: every run goes to review."""
    automated_share: float
    metrics: dict[str, Any]
    bar: dict[str, Any]
    model_text: str = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (without the booster)."""
        return {
            "id": self.id, "agent": self.agent, "created_at": self.created_at,
            "trained_on": self.trained_on, "features": self.spec.to_json(),
            "threshold": self.threshold, "automated_share": self.automated_share,
            "metrics": self.metrics, "bar": self.bar,
        }

    def booster(self) -> Any:
        """The LightGBM booster (cached per model)."""
        key = (self.agent, self.id)
        found = _CACHE.get(key)
        if found is not None and found[0] == self.model_text:
            return found[1]
        import lightgbm as lgb

        b = lgb.Booster(model_str=self.model_text)
        with _LOCK:
            _CACHE[key] = (self.model_text, b)
        return b

    def score_rows(self, rows: list[dict[str, Any]]) -> Any:
        """The estimated probability that each run's output is correct."""
        import numpy as np

        X = np.asarray([self.spec.vector(r) for r in rows], dtype=float)
        return self.booster().predict(X, num_threads=1)

    def score(self, row: dict[str, Any]) -> float:
        """One run's estimated probability of being correct."""
        return float(self.score_rows([row])[0])


def _model(row: Any) -> TriageModel:
    m = row._mapping
    return TriageModel(
        id=m["id"], agent=m["agent"], created_at=m["created_at"], trained_on=m["trained_on"],
        spec=FeatureSpec.from_json(m["features"]), threshold=m["threshold"],
        automated_share=m["automated_share"], metrics=m["metrics"], bar=m["bar"],
        model_text=bytes(m["model"]).decode(),
    )


def latest_model_id(store: Store, agent: str) -> int | None:
    """The id of the agent's newest model (cheap: no model text), or None."""
    with store.engine.connect() as conn:
        return conn.execute(
            select(triage_models.c.id).where(triage_models.c.agent == agent)
            .order_by(triage_models.c.id.desc()).limit(1)
        ).scalar()


def latest_model(store: Store, agent: str) -> TriageModel | None:
    """The agent's newest triage model, or None."""
    with store.engine.connect() as conn:
        row = conn.execute(
            select(triage_models).where(triage_models.c.agent == agent)
            .order_by(triage_models.c.id.desc()).limit(1)
        ).first()
    return None if row is None else _model(row)
