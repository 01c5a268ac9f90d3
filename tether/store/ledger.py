"""The tamper-evident history: each task's records form a hash chain.

Every record that is final once written — an input, a finished step, a run's outcome, an
operator's action — gets a ledger entry in the same transaction that writes it::

    digest = sha256(canonical JSON of the record's content)
    hash   = sha256(prev_hash | kind | ref | digest)

where ``prev_hash`` is the hash of the task's previous entry (:data:`GENESIS` for the
first). Changing a recorded row changes its digest; removing one leaves an entry that
points at nothing; removing or editing an entry breaks the chain. ``tether verify``
recomputes every chain (:func:`tether.store.verify.verify`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

GENESIS = "0" * 64

# The fields whose values are hashed, per kind: what must never change once recorded.
FIELDS: dict[str, tuple[str, ...]] = {
    "input": ("task_id", "seq", "data", "received_at"),
    "step": (
        "run_id",
        "seq",
        "name",
        "key",
        "input",
        "output",
        "status",
        "error",
        "started_at",
        "finished_at",
    ),
    "run": (
        "id",
        "task_id",
        "attempt",
        "reason",
        "note",
        "status",
        "failure_class",
        "failure_reason",
        "output",
        "waiting_for",
        "created_at",
        "started_at",
        "finished_at",
        "worker",
    ),
    "action": ("id", "task_id", "action", "actor", "note", "run_id", "created_at"),
    # A human review (tether/review): immutable once recorded, like an operator's action.
    "review": (
        "id", "run_id", "task_id", "agent", "verdict", "reason", "corrected_output",
        "reviewer", "created_at",
    ),
}


def _normal(value: Any) -> Any:
    """JSON data in one form whatever database it came back from: PostgreSQL's JSONB
    returns ``1e20`` as an integer, so integral floats are hashed as integers."""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


def digest(kind: str, row: Mapping[str, Any]) -> str:
    """SHA-256 of a record's hashed fields, in canonical JSON."""
    content = {name: _normal(row[name]) for name in FIELDS[kind]}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def chain(prev_hash: str, kind: str, ref: str, record_digest: str) -> str:
    """The hash of a ledger entry, binding it to the entry before it."""
    return hashlib.sha256(f"{prev_hash}|{kind}|{ref}|{record_digest}".encode()).hexdigest()


def ref_of(kind: str, row: Mapping[str, Any]) -> str:
    """How an entry names its record: ``run:12``, ``step:12:3``, ``input:4:2``, ``action:7``."""
    if kind == "step":
        return f"step:{row['run_id']}:{row['seq']}"
    if kind == "input":
        return f"input:{row['task_id']}:{row['seq']}"
    return f"{kind}:{row['id']}"
