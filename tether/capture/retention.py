"""Retention: delete the bodies of old exchanges, keeping their rows marked ``pruned``.

Rows are small and keep what drift needs (fingerprints and body hashes); bodies are what
grows. A body still used by an exchange younger than the cut-off is kept on disk, but
every older exchange is marked: what is dropped is never dropped silently.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, func, literal, or_, select, union, update

from tether.capture.queries import blobs_of
from tether.errors import ConfigError
from tether.store import Store
from tether.store.schema_capture import http_exchanges as ex

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds in an age like ``30d``, ``12h``, ``90m``, ``2w`` or ``45s``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not match:
        raise ConfigError(
            f"{text!r} is not an age; write a number and a unit: 30d, 12h, 90m, 2w or 45s"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class PruneResult:
    """What a prune did (or, with ``dry_run``, would do)."""

    cutoff: float
    exchanges: int
    """Exchanges older than the cut-off whose bodies were marked pruned."""
    bodies_deleted: int
    bodies_kept: int
    """Bodies of old exchanges kept because a younger exchange uses them too."""
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def prune(
    store: Store,
    older_than: float | str,
    *,
    now: float | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PruneResult:
    """Delete the bodies of exchanges that started more than ``older_than`` ago.

    Args:
        store: the store (its configured blob store is pruned).
        older_than: seconds, or an age such as ``"30d"``.
        now: the reference time (default: now).
        dry_run: count only; change nothing.
        progress: called with (done, total) as bodies are deleted.
    """
    age = parse_age(older_than) if isinstance(older_than, str) else float(older_than)
    cutoff = (time.time() if now is None else now) - age
    old = ex.c.started_at < cutoff
    stored_req = and_(old, ex.c.request_body == "stored")
    stored_resp = and_(old, ex.c.response_body == "stored")
    candidates_q = union(
        select(ex.c.request_sha256.label("sha")).where(stored_req),
        select(ex.c.response_sha256.label("sha")).where(stored_resp),
    )
    young = ex.c.started_at >= cutoff
    used_q = union(
        select(ex.c.request_sha256.label("sha")).where(young, ex.c.request_body == "stored"),
        select(ex.c.response_sha256.label("sha")).where(young, ex.c.response_body == "stored"),
    )
    with store.engine.connect() as conn:
        candidates = {r.sha for r in conn.execute(candidates_q) if r.sha}
        used = {r.sha for r in conn.execute(used_q) if r.sha}
        count = conn.execute(
            select(func.count()).select_from(ex).where(or_(stored_req, stored_resp))
        ).scalar_one()
    doomed = sorted(candidates - used)
    if dry_run:
        return PruneResult(cutoff, count, len(doomed), len(candidates & used), True)
    at = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    message = f"bodies pruned at {at} (retention: older than {age / 86400:g} days)"
    note = func.coalesce(ex.c.note + literal("; "), literal("")) + literal(message)

    def mark(conn: Connection) -> None:
        # The rows first: a crash between the two steps leaves bodies on disk that no row
        # claims (a later prune finds nothing to do for them), never a row that lies.
        conn.execute(update(ex).where(stored_req, stored_resp).values(
            request_body="pruned", response_body="pruned", note=note))
        conn.execute(update(ex).where(stored_req).values(request_body="pruned", note=note))
        conn.execute(update(ex).where(stored_resp).values(response_body="pruned", note=note))

    store._transact(mark)
    blobs = blobs_of(store)
    deleted = 0
    for i, sha in enumerate(doomed, 1):
        deleted += blobs.delete(sha)
        if progress is not None:
            progress(i, len(doomed))
    return PruneResult(cutoff, count, deleted, len(candidates & used), False)
