"""Reading captured exchanges back: :func:`exchanges` of a run or task and :func:`body`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from tether.capture.blobs import EMPTY_SHA256, BlobStore, open_blobs
from tether.capture.config import config_for
from tether.errors import NotFound
from tether.store import Store
from tether.store.schema_capture import http_exchanges as ex


@dataclass(frozen=True, slots=True)
class Exchange:
    """One recorded HTTP exchange (redacted). Bodies are fetched with :func:`body`."""

    id: int
    run_id: int
    task_id: int
    seq: int
    """Order within the run (1, 2, …)."""
    step: int | None
    """The seq of the step in progress when the request was made, if any."""
    library: str
    method: str
    url: str
    fingerprint: str
    """Normalised key of the request (see :mod:`tether.capture.fingerprint`)."""
    request_headers: tuple[tuple[str, str], ...]
    request_sha256: str | None
    request_size: int
    request_body: str
    """stored | empty | over_cap | streamed | pruned"""
    status: int | None
    response_headers: tuple[tuple[str, str], ...]
    response_sha256: str | None
    response_size: int | None
    response_body: str
    """stored | empty | over_cap | partial | unread | none (no response) | pruned"""
    response_encoding: str | None
    """The Content-Encoding the body arrived in, when it is stored decoded."""
    error: str | None
    note: str | None
    """What was not kept, and why."""
    started_at: float
    elapsed: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {
            name: ([list(h) for h in value] if name.endswith("_headers") else value)
            for name in self.__dataclass_fields__
            for value in [getattr(self, name)]
        }


_COLUMNS = (
    ex.c.id, ex.c.run_id, ex.c.task_id, ex.c.seq, ex.c.step_seq, ex.c.library, ex.c.method,
    ex.c.url, ex.c.fingerprint, ex.c.request_headers, ex.c.request_sha256, ex.c.request_size,
    ex.c.request_body, ex.c.status, ex.c.response_headers, ex.c.response_sha256,
    ex.c.response_size, ex.c.response_body, ex.c.response_encoding, ex.c.error, ex.c.note,
    ex.c.started_at, ex.c.elapsed,
)


def _exchange(r: Any) -> Exchange:
    return Exchange(
        id=r.id, run_id=r.run_id, task_id=r.task_id, seq=r.seq, step=r.step_seq,
        library=r.library, method=r.method, url=r.url, fingerprint=r.fingerprint,
        request_headers=tuple((k, v) for k, v in (r.request_headers or ())),
        request_sha256=r.request_sha256, request_size=r.request_size,
        request_body=r.request_body, status=r.status,
        response_headers=tuple((k, v) for k, v in (r.response_headers or ())),
        response_sha256=r.response_sha256, response_size=r.response_size,
        response_body=r.response_body, response_encoding=r.response_encoding,
        error=r.error, note=r.note, started_at=r.started_at, elapsed=r.elapsed,
    )


def exchanges(store: Store, run_id: int) -> list[Exchange]:
    """Every HTTP exchange run ``run_id`` made, in order (empty if none)."""
    query = select(*_COLUMNS).where(ex.c.run_id == run_id).order_by(ex.c.seq)
    with store.engine.connect() as conn:
        return [_exchange(r) for r in conn.execute(query)]


def task_exchanges(store: Store, task_id: int) -> list[Exchange]:
    """Every HTTP exchange of every run of a task, oldest run first, in order."""
    query = (
        select(*_COLUMNS).where(ex.c.task_id == task_id).order_by(ex.c.run_id, ex.c.seq)
    )
    with store.engine.connect() as conn:
        return [_exchange(r) for r in conn.execute(query)]


def exchanges_by_fingerprint(store: Store, fingerprints: list[str]) -> list[Exchange]:
    """Every exchange (any task) with one of ``fingerprints``, oldest first."""
    if not fingerprints:
        return []
    query = (
        select(*_COLUMNS)
        .where(ex.c.fingerprint.in_(fingerprints))
        .order_by(ex.c.started_at, ex.c.run_id, ex.c.seq)
    )
    with store.engine.connect() as conn:
        return [_exchange(r) for r in conn.execute(query)]


def blobs_of(store_or_blobs: Store | BlobStore) -> BlobStore:
    """The blob store of a store (as configured), or the blob store given."""
    if isinstance(store_or_blobs, Store):
        return open_blobs(config_for(store_or_blobs).blobs)
    return store_or_blobs


def body(store_or_blobs: Store | BlobStore, sha: str | None) -> bytes:
    """The stored body with hash ``sha`` (as stored: redacted, Content-Encoding undone).

    Raises:
        NotFound: no body with that hash is stored (never stored: over the size cap, or
            pruned; or the blob folder is not the one the store was captured with).
    """
    if sha is None:
        raise NotFound("this exchange has no stored body (see its note)")
    if sha == EMPTY_SHA256:
        return b""
    return blobs_of(store_or_blobs).get(sha)
