"""The manager's production bar per agent, and the audit log of every change to it.

A bar is "the automated share is at least ``target`` correct, at ``confidence``". Setting
it appends a row (history is kept; the latest wins) and an audit entry, in one transaction.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, insert, select

from tether.store import Store
from tether.store.schema_triage import audit_log, bars
from tether.triage.errors import TriageError

METRICS = ("precision", "accuracy")


@dataclass(frozen=True, slots=True)
class Bar:
    """One setting of an agent's production bar.

    ``metric`` is ``precision`` or ``accuracy``; both are measured on the automated share
    (the runs the triage lets through without review): the share of them that is correct.
    """

    id: int
    agent: str
    metric: str
    target: float
    confidence: float
    set_by: str
    set_at: float
    note: str | None = None
    rollout_rate: float = 0.05
    """The share of automated runs still sampled for review, so precision stays measured."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the CLI prints and a model keeps as its bar snapshot."""
        return asdict(self)

    def describe(self) -> str:
        """``automated decisions >= 98% correct (precision) at 95% confidence``."""
        return (
            f"automated decisions >= {self.target:.1%} correct ({self.metric}) "
            f"at {self.confidence:.0%} confidence; {self.rollout_rate:.0%} of automated runs "
            "sampled for review"
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One human action: who did what to which subject, when, with what detail."""

    id: int
    at: float
    actor: str
    action: str
    subject: str
    detail: Any

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return asdict(self)


def _check(
    agent: str, metric: str, target: float, confidence: float, by: str, rollout: float
) -> None:
    if not agent or not agent.strip():
        raise TriageError("bar: the agent name is empty; pass the agent's name, e.g. `quote`")
    if metric not in METRICS:
        raise TriageError(
            f"bar for {agent!r}: metric {metric!r} is not one of {', '.join(METRICS)}"
        )
    if not 0.0 < target < 1.0:
        raise TriageError(
            f"bar for {agent!r}: --{metric} {target} is outside (0, 1); give a share, e.g. 0.98"
        )
    if not 0.0 < confidence < 1.0:
        raise TriageError(
            f"bar for {agent!r}: --confidence {confidence} is outside (0, 1); e.g. 0.95"
        )
    if not 0.0 <= rollout <= 1.0:
        raise TriageError(
            f"bar for {agent!r}: --rollout {rollout} is outside [0, 1]; e.g. 0.05 for 5%"
        )
    if not by or not by.strip():
        raise TriageError(f"bar for {agent!r}: say who sets it (--by NAME)")


def record_audit(
    conn: Connection, *, actor: str, action: str, subject: str, detail: Any, at: float
) -> int:
    """Append one audit entry inside the caller's transaction; returns its id."""
    return int(
        conn.execute(
            insert(audit_log)
            .values(at=at, actor=actor, action=action, subject=subject, detail=detail)
            .returning(audit_log.c.id)
        ).scalar_one()
    )


def set_bar(
    store: Store,
    agent: str,
    *,
    target: float,
    confidence: float,
    metric: str = "precision",
    by: str,
    note: str | None = None,
    rollout_rate: float = 0.05,
    now: float | None = None,
) -> Bar:
    """Set ``agent``'s bar; the change and the bar it replaced go to the audit log.

    Raises:
        TriageError: a value is out of range or the metric is unknown.
    """
    _check(agent, metric, target, confidence, by, rollout_rate)
    when = time.time() if now is None else now
    values = {
        "agent": agent, "metric": metric, "target": float(target),
        "confidence": float(confidence), "set_by": by, "set_at": when, "note": note,
        "rollout_rate": float(rollout_rate),
    }

    def body(conn: Connection) -> Bar:
        before = _latest(conn, agent)
        bar_id = conn.execute(insert(bars).values(**values).returning(bars.c.id)).scalar_one()
        bar = Bar(id=int(bar_id), **values)  # type: ignore[arg-type]
        record_audit(
            conn, actor=by, action="bar.set", subject=f"agent:{agent}", at=when,
            detail={
                "bar": bar.to_dict(),
                "previous": before.to_dict() if before is not None else None,
            },
        )
        return bar

    return store._transact(body)


def _row_bar(row: Any) -> Bar:
    return Bar(**{k: row._mapping[k] for k in Bar.__dataclass_fields__})


def _latest(conn: Connection, agent: str) -> Bar | None:
    row = conn.execute(
        select(bars).where(bars.c.agent == agent).order_by(bars.c.id.desc()).limit(1)
    ).first()
    return None if row is None else _row_bar(row)


def get_bar(store: Store, agent: str) -> Bar | None:
    """The agent's current bar, or None when none was set."""
    with store.engine.connect() as conn:
        return _latest(conn, agent)


def bar_history(store: Store, agent: str) -> list[Bar]:
    """Every bar set for ``agent``, oldest first."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(bars).where(bars.c.agent == agent).order_by(bars.c.id))
        return [_row_bar(r) for r in rows]


def audit_entries(store: Store, subject: str | None = None) -> list[AuditEntry]:
    """The audit log (of one subject, e.g. ``agent:quote``), oldest first."""
    q = select(audit_log).order_by(audit_log.c.id)
    if subject is not None:
        q = q.where(audit_log.c.subject == subject)
    with store.engine.connect() as conn:
        return [AuditEntry(**dict(r._mapping)) for r in conn.execute(q)]
