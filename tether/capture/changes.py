"""Drift: when the same request got a different answer.

For each request fingerprint the history of answers over time (status and body hash, in
the order the calls were made); a *change* is a call whose answer differs from the call
before it, within one run or between runs. :func:`drift` lists the fingerprints of a task
that changed, each change with a readable diff (JSON pretty-printed with sorted keys).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tether.capture.blobs import BlobStore
from tether.capture.config import config_for
from tether.capture.fingerprint import canonical_json
from tether.capture.queries import Exchange, blobs_of, exchanges_by_fingerprint, task_exchanges
from tether.errors import NotFound
from tether.store import Store

MAX_DIFF_LINES = 200

# Answers that were not received whole say nothing about what the world answered.
_INCOMPLETE = frozenset({"partial", "unread"})


@dataclass(frozen=True, slots=True)
class Answer:
    """One call of a request: when, in which run, and what came back."""

    run_id: int
    task_id: int
    seq: int
    at: float
    status: int | None
    sha256: str | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Change:
    """The answer moved between two consecutive calls of the same request."""

    before: Answer
    after: Answer
    across_runs: bool
    """True when the two calls were made by different runs (else within one run)."""
    diff: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"before": self.before.to_dict(), "after": self.after.to_dict(),
                "across_runs": self.across_runs, "diff": self.diff}


@dataclass(frozen=True)
class Drift:
    """A request (one fingerprint) whose answer changed."""

    fingerprint: str
    method: str
    url: str
    calls: int
    answers: int
    """How many distinct answers it got."""
    history: list[Answer] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {
            "fingerprint": self.fingerprint, "method": self.method, "url": self.url,
            "calls": self.calls, "answers": self.answers,
            "history": [a.to_dict() for a in self.history],
            "changes": [c.to_dict() for c in self.changes],
        }


def _answer(ex: Exchange) -> Answer:
    return Answer(run_id=ex.run_id, task_id=ex.task_id, seq=ex.seq, at=ex.started_at,
                  status=ex.status, sha256=ex.response_sha256, error=ex.error)


def _lines(blobs: BlobStore, ex: Exchange) -> list[str] | None:
    if ex.response_sha256 is None or ex.response_body not in ("stored", "empty"):
        return None
    try:
        data = blobs.get(ex.response_sha256)
    except NotFound:
        return None
    text = canonical_json(data)
    if text is not None:
        return json.dumps(json.loads(text), indent=2, sort_keys=True,
                          ensure_ascii=False).splitlines()
    try:
        return data.decode().splitlines()
    except UnicodeDecodeError:
        return None


def _when(ex: Exchange) -> str:
    at = datetime.fromtimestamp(ex.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"run {ex.run_id} call {ex.seq} at {at}Z"


def body_diff(blobs: BlobStore, before: Exchange, after: Exchange) -> str:
    """A readable unified diff between the answers of two exchanges."""
    head: list[str] = []
    if before.status != after.status:
        head.append(f"status {before.status} → {after.status}")
    if before.error != after.error:
        head.append(f"error {before.error or '-'} → {after.error or '-'}")
    a, b = _lines(blobs, before), _lines(blobs, after)
    if a is None or b is None:
        if before.response_sha256 != after.response_sha256:
            head.append(
                f"body {before.response_sha256 or '-'} ({before.response_size} bytes, "
                f"{before.response_body}) → {after.response_sha256 or '-'} "
                f"({after.response_size} bytes, {after.response_body}): not comparable as text"
            )
        return "\n".join(head)
    lines = list(difflib.unified_diff(a, b, _when(before), _when(after), lineterm=""))
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"… {len(lines) - MAX_DIFF_LINES} more lines"]
    return "\n".join(head + lines)


def _keys(blobs: BlobStore, group: list[Exchange], ignore: tuple[str, ...]) -> list[Any]:
    """What counts as "the same answer" for each call: status + body hash, or with
    ``capture_ignore_fields`` set, status + canonical JSON without those fields."""
    keys: list[Any] = [(ex.status, ex.response_sha256, ex.error) for ex in group]
    if not ignore or len({k[1] for k in keys}) < 2:
        return keys
    cache: dict[str | None, Any] = {}
    out = []
    for ex in group:
        sha = ex.response_sha256
        if sha not in cache:
            cache[sha] = sha
            if sha is not None and ex.response_body in ("stored", "empty"):
                try:
                    text = canonical_json(blobs.get(sha), ignore)
                except NotFound:
                    text = None
                if text is not None:
                    cache[sha] = "json:" + text
        out.append((ex.status, cache[sha], ex.error))
    return out


def histories(store: Store, found: list[Exchange]) -> list[Drift]:
    """Every fingerprint among ``found`` with its answer history and changes (changed or
    not), in order of first call."""
    blobs = blobs_of(store)
    ignore = config_for(store).ignore_fields
    groups: dict[str, list[Exchange]] = {}
    for ex in sorted(found, key=lambda e: (e.started_at, e.run_id, e.seq)):
        if ex.response_body in _INCOMPLETE:
            continue
        groups.setdefault(ex.fingerprint, []).append(ex)
    out = []
    for fp, group in groups.items():
        keys = _keys(blobs, group, ignore)
        changes = [
            Change(
                before=_answer(group[i - 1]),
                after=_answer(group[i]),
                across_runs=group[i - 1].run_id != group[i].run_id,
                diff=body_diff(blobs, group[i - 1], group[i]),
            )
            for i in range(1, len(group))
            if keys[i] != keys[i - 1]
        ]
        last = group[-1]
        out.append(Drift(fingerprint=fp, method=last.method, url=last.url, calls=len(group),
                         answers=len(set(keys)), history=[_answer(e) for e in group],
                         changes=changes))
    return out


def drift(store: Store, task: str | int, *, everywhere: bool = False) -> list[Drift]:
    """The requests of a task whose answer changed, between calls or between runs.

    Args:
        store: the store.
        task: a task id or ``AGENT/KEY``.
        everywhere: compare with the same requests made by every task, not only this one.
    """
    t = store.get_task(task)
    found = task_exchanges(store, t.id)
    if everywhere:
        found = exchanges_by_fingerprint(store, sorted({e.fingerprint for e in found}))
    return [d for d in histories(store, found) if d.changes]
