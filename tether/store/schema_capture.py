"""World capture's tables (issue 5): HTTP exchanges and content-addressed bodies.

Defined on the one :data:`tether.store.schema.metadata`; ``schema.py`` imports this module
so the declared schema (and the migration test) always sees every table.

Bodies are not in the database: ``request_sha256`` / ``response_sha256`` name blobs in the
content-addressed blob store (see :mod:`tether.capture.blobs`). A body that was not kept
says so in ``*_body`` (``stored`` | ``empty`` | ``over_cap`` | ``pruned`` | ``unread`` |
``streamed`` | ``none``) and in ``note``: nothing is dropped silently.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from tether.store.schema import Id, Json, Time, metadata

http_exchanges = Table(
    "http_exchanges",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", Id, ForeignKey("runs.id"), nullable=False),
    Column("task_id", Id, ForeignKey("tasks.id"), nullable=False),
    # The step (its seq within the run) in progress when the request was made, if any.
    Column("step_seq", Integer, nullable=True),
    # Order of the exchange within its run (1, 2, ...).
    Column("seq", Integer, nullable=False),
    # httpx | requests
    Column("library", String(12), nullable=False),
    Column("method", String(16), nullable=False),
    # Redacted (secret query parameters replaced).
    Column("url", Text, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    # Redacted headers as [[name, value], ...] (repeated names kept).
    Column("request_headers", Json, nullable=True),
    Column("request_sha256", String(64), nullable=True),
    Column("request_size", BigInteger, nullable=False),
    Column("request_body", String(10), nullable=False),
    # None when the request failed before a response (see `error`).
    Column("status", Integer, nullable=True),
    Column("response_headers", Json, nullable=True),
    Column("response_sha256", String(64), nullable=True),
    Column("response_size", BigInteger, nullable=True),
    Column("response_body", String(10), nullable=False),
    # The Content-Encoding the body arrived in, when it was stored decoded.
    Column("response_encoding", String(40), nullable=True),
    Column("error", Text, nullable=True),
    Column("note", Text, nullable=True),
    Column("started_at", Time, nullable=False),
    # Seconds from sending the request to the end of the response body.
    Column("elapsed", Time, nullable=True),
    UniqueConstraint("run_id", "seq"),
    Index(None, "task_id"),
    Index(None, "fingerprint", "started_at"),
    Index(None, "started_at"),
    Index(None, "request_sha256"),
    Index(None, "response_sha256"),
)
