"""The run's capture: which run and step an HTTP exchange belongs to, and the writer that
redacts, hashes and stores exchanges off the agent's thread.

Capture is process-wide (the transports are patched once, see :mod:`.transports`) but
gated by a :class:`contextvars.ContextVar` holding the current run's :class:`RunCapture`:
outside a run the patched transports pass straight through. The executor sets it around
the agent call; :class:`tether.StepHandle` sets the current step.

The hot path only collects bytes and enqueues; a per-store writer thread does the rest
(redaction, SHA-256, blobs, rows in batches). :func:`recording` waits for the run's
exchanges to be written before it returns, so none is lost when a run completes.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import queue
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, insert

from tether.capture.blobs import EMPTY_SHA256, BlobStore, open_blobs
from tether.capture.config import CaptureConfig, config_for
from tether.capture.fingerprint import fingerprint
from tether.capture.redact import Redactor, scrub, scrub_text
from tether.store.schema_capture import http_exchanges

if TYPE_CHECKING:
    from tether.capture.replayer import World
    from tether.store import Store

log = logging.getLogger("tether.capture")

SCAN_LIMIT = 256 * 1024
"""Bodies up to this size are searched for secret JSON / form fields by name; larger ones
only for the secret values already seen in the run (scanning costs more than it finds)."""

T = TypeVar("T")

_current: ContextVar[RunCapture | None] = ContextVar("tether_capture", default=None)
_step: ContextVar[int | None] = ContextVar("tether_capture_step", default=None)


# -- steps ------------------------------------------------------------------------------


def enter_step(seq: int) -> Token[int | None]:
    """Mark step ``seq`` as the one in progress (its exchanges link to it)."""
    return _step.set(seq)


def exit_step(token: Token[int | None] | None) -> None:
    """Undo :func:`enter_step`."""
    if token is None:
        return
    try:
        _step.reset(token)
    except ValueError:  # exited in another context (an unusual async pattern): harmless
        _step.set(None)


def current() -> RunCapture | None:
    """The capture of the run executing in this context, if any."""
    return _current.get()


# -- what the hot path hands over ------------------------------------------------------


class Collector:
    """A response body as it streams past: chunks kept up to the size cap, then only
    hashed (the body is marked ``over_cap``)."""

    __slots__ = ("cap", "chunks", "hasher", "size")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = 0
        self.chunks: list[bytes] | None = []
        self.hasher: Any = None

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.chunks is not None:
            self.chunks.append(chunk)
            if self.size > self.cap:
                self.hasher = hashlib.sha256()
                for c in self.chunks:
                    self.hasher.update(c)
                self.chunks = None
        else:
            self.hasher.update(chunk)


@dataclass(slots=True)
class RawExchange:
    """One exchange as the transport saw it, before redaction."""

    run: RunCapture
    seq: int
    step: int | None
    library: str
    method: str
    url: str
    request_headers: list[tuple[str, str]]
    request_body: bytes | None
    started_at: float
    request_streamed: bool = False
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    body: Collector | None = None
    decoded: bool = False
    """The body was collected after the client decoded Content-Encoding (requests)."""
    complete: bool = True
    error: str | None = None
    elapsed: float | None = None


class RunCapture:
    """The capture of one run: its ids, the next exchange seq, and (for a replay) the
    recorded world that answers instead of the network."""

    def __init__(
        self,
        sink: Sink | None,
        run_id: int,
        task_id: int,
        *,
        config: CaptureConfig,
        world: World | None = None,
    ) -> None:
        self.sink = sink
        self.run_id = run_id
        self.task_id = task_id
        self.config = config
        self.world = world
        self.secrets: set[bytes] = set()
        """Secret values seen in this run's requests (writer thread only)."""
        self._seq = itertools.count(1)
        self.made = 0
        self.open: set[Any] = set()
        """Response bodies still streaming (recorded at the latest when the run ends)."""

    def start(self, library: str, method: str, url: str, headers: list[tuple[str, str]],
              body: bytes | None, *, streamed: bool = False) -> RawExchange:
        """A new exchange of this run, starting now."""
        self.made += 1
        return RawExchange(
            run=self, seq=next(self._seq), step=_step.get(), library=library,
            method=method, url=url, request_headers=headers, request_body=body,
            started_at=time.time(), request_streamed=streamed,
        )

    def finish(self, raw: RawExchange) -> None:
        """Hand a finished exchange to the writer."""
        if self.sink is not None:
            self.sink.enqueue(raw)


# -- redaction + hashing (the writer's work) --------------------------------------------


def _header(headers: list[tuple[str, str]] | list[list[str]], name: str) -> str:
    for k, v in headers:
        if k.lower() == name:
            return v
    return ""


def prepare_request(
    redactor: Redactor,
    config: CaptureConfig,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    secrets: set[bytes],
) -> tuple[str, list[list[str]], bytes | None, str]:
    """The redacted URL, headers and body of a request, and its fingerprint."""
    red_headers = redactor.headers(headers, secrets)
    red_url = redactor.url(url, secrets)
    ctype = _header(headers, "content-type")
    red_body = redactor.body(body, ctype, secrets) if body and len(body) <= SCAN_LIMIT else body
    if secrets:
        red_url = scrub_text(red_url, secrets)
        red_headers = [[k, scrub_text(v, secrets)] for k, v in red_headers]
        red_body = scrub(red_body, secrets) if red_body else red_body
    fp = fingerprint(
        method, red_url, red_headers, red_body,
        selected_headers=config.fingerprint_headers,
        ignore_query=config.ignore_query,
        ignore_fields=config.ignore_fields,
    )
    return red_url, red_headers, red_body, fp


def _decode(data: bytes, encoding: str) -> bytes | None:
    """``data`` without its Content-Encoding, or None if we cannot undo it."""
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(data, zlib.MAX_WBITS | 16)
        if encoding == "deflate":
            try:
                return zlib.decompress(data)
            except zlib.error:
                return zlib.decompress(data, -zlib.MAX_WBITS)
    except zlib.error:
        return None
    return None


class Sink:
    """The writer of one store: a daemon thread that redacts, hashes and stores the
    exchanges the hot path enqueues, in batches (it exits when idle, restarts on demand)."""

    BATCH = 256
    LINGER = 0.05
    """Seconds between the writer's passes over the queue (a flush ends the wait)."""

    def __init__(self, store: Store, config: CaptureConfig) -> None:
        self.store = store
        self.config = config
        self.blobs: BlobStore = open_blobs(config.blobs)
        self.redactor = Redactor(config.redact_headers, config.redact_fields)
        self.errors: deque[str] = deque(maxlen=100)
        """Why the last writes failed (also logged); capture never fails the agent's run."""
        self._q: queue.SimpleQueue[RawExchange | threading.Event] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def enqueue(self, item: RawExchange | threading.Event) -> None:
        # The hot path: a lock-free put, no wake-up of the writer (it polls every LINGER).
        self._q.put(item)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._serve, name="tether-capture", daemon=True
                    )
                    self._thread.start()

    def flush(self, timeout: float = 120.0) -> bool:
        """Wait until everything enqueued so far is written; False on timeout."""
        marker = threading.Event()
        self.enqueue(marker)
        self._wake.set()
        return marker.wait(timeout)

    def _serve(self) -> None:
        idle = 0.0
        while True:
            # Poll rather than block on the queue: a put then wakes no thread, and one
            # commit (one fsync) serves every exchange of the last LINGER seconds.
            self._wake.wait(self.LINGER)
            self._wake.clear()
            batch: list[RawExchange | threading.Event] = []
            while True:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                idle += self.LINGER
                if idle >= 2.0:
                    with self._lock:
                        self._thread = None
                        if self._q.empty():
                            return
                        self._thread = threading.current_thread()
                continue
            idle = 0.0
            raws = [b for b in batch if isinstance(b, RawExchange)]
            try:
                for i in range(0, len(raws), self.BATCH):
                    self._write(raws[i:i + self.BATCH])
            except Exception as exc:  # never kill the writer: the run must still finish
                msg = f"could not record {len(raws)} HTTP exchanges: {exc}"
                self.errors.append(msg)
                log.warning(msg)
            finally:
                for m in batch:
                    if isinstance(m, threading.Event):
                        m.set()

    def _write(self, raws: list[RawExchange]) -> None:
        rows = []
        for raw in raws:
            try:
                rows.append(self.row(raw))
            except Exception as exc:
                msg = f"could not record {raw.method} exchange {raw.seq} of run " \
                      f"{raw.run.run_id}: {exc}"
                self.errors.append(msg)
                log.warning(msg)
        if not rows:
            return
        # Hand the GIL to the agent's thread before the insert's pure-Python work.
        time.sleep(0)
        try:
            self.store._transact(lambda conn: conn.execute(insert(http_exchanges), rows))
        except Exception:
            # One bad row (e.g. its run was deleted) must not cost the batch: row by row.
            for row in rows:
                try:
                    self._insert_one(row)
                except Exception as exc:
                    msg = (f"could not record exchange {row['seq']} of run {row['run_id']} "
                           f"({row['method']} {row['url']}): {exc}")
                    self.errors.append(msg)
                    log.warning(msg)

    def _insert_one(self, row: dict[str, Any]) -> None:
        def body(conn: Connection) -> None:
            conn.execute(insert(http_exchanges), [row])

        self.store._transact(body)

    def row(self, raw: RawExchange) -> dict[str, Any]:
        """Redact, hash and store the bodies of one exchange; its row."""
        cap = self.config.max_body
        secrets = raw.run.secrets
        url, req_headers, req_body, fp = prepare_request(
            self.redactor, self.config, raw.method, raw.url, raw.request_headers,
            raw.request_body, secrets,
        )
        notes: list[str] = []
        req_sha, req_state = None, "empty"
        req_size = len(raw.request_body or b"")
        if raw.request_streamed:
            req_state = "streamed"
            notes.append("request body was streamed by the client: not captured")
        elif req_body:
            req_sha = hashlib.sha256(req_body).hexdigest()
            if len(req_body) > cap:
                req_state = "over_cap"
                notes.append(f"request body of {len(req_body)} bytes over the {cap}-byte "
                             "cap: hashed, not stored")
            else:
                self.blobs.put(req_sha, req_body)
                req_state = "stored"
        resp_headers = self.redactor.headers(raw.response_headers, secrets)
        if secrets:
            resp_headers = [[k, scrub_text(v, secrets)] for k, v in resp_headers]
        resp_sha: str | None = None
        resp_state = "none"
        resp_size: int | None = None
        encoding: str | None = None
        body = raw.body
        if raw.error is not None:
            resp_state = "none"
        elif body is None:
            resp_state = "unread"
            notes.append("the agent never read the response body")
        else:
            resp_size = body.size
            content_encoding = _header(raw.response_headers, "content-encoding").lower()
            if not raw.complete:
                resp_state = "partial"
                notes.append(f"the agent stopped reading the response after {body.size} bytes: "
                             "partial body not stored")
            elif body.chunks is None:
                resp_state = "over_cap"
                resp_sha = body.hasher.hexdigest()
                notes.append(f"response body of {body.size} bytes over the {cap}-byte cap: "
                             "hashed as received, not stored")
            else:
                chunks = body.chunks
                decode = (bool(content_encoding) and content_encoding != "identity"
                          and not raw.decoded)
                if content_encoding and content_encoding != "identity" and raw.decoded:
                    encoding = content_encoding
                if decode:
                    data = b"".join(chunks)
                    plain = _decode(data, content_encoding)
                    if plain is not None:
                        chunks, encoding = [plain], content_encoding
                resp_state, resp_sha = self._store_response(chunks, raw, secrets, cap, notes)
        return {
            "run_id": raw.run.run_id,
            "task_id": raw.run.task_id,
            "step_seq": raw.step,
            "seq": raw.seq,
            "library": raw.library,
            "method": raw.method,
            "url": url,
            "fingerprint": fp,
            "request_headers": req_headers,
            "request_sha256": req_sha,
            "request_size": req_size,
            "request_body": req_state,
            "status": raw.status,
            "response_headers": resp_headers if raw.error is None else None,
            "response_sha256": resp_sha,
            "response_size": resp_size,
            "response_body": resp_state,
            "response_encoding": encoding,
            "error": scrub_text(raw.error, secrets) if raw.error else None,
            "note": "; ".join(notes) or None,
            "started_at": raw.started_at,
            "elapsed": raw.elapsed,
        }

    def _store_response(
        self, chunks: list[bytes], raw: RawExchange, secrets: set[bytes], cap: int,
        notes: list[str],
    ) -> tuple[str, str]:
        size = sum(len(c) for c in chunks)
        if size == 0:
            return "empty", EMPTY_SHA256
        if size > SCAN_LIMIT and not secrets:
            # A large body with no secret value to look for: hash and write it chunk by
            # chunk (both release the GIL), without copying it into one buffer.
            hasher = hashlib.sha256()
            for c in chunks:
                hasher.update(c)
            sha = hasher.hexdigest()
            if size > cap:
                notes.append(f"response body of {size} bytes (decoded) over the {cap}-byte "
                             "cap: hashed, not stored")
                return "over_cap", sha
            self.blobs.put(sha, chunks)
            return "stored", sha
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        data = scrub(data, secrets)
        if len(data) <= SCAN_LIMIT:
            data = self.redactor.body(data, _header(raw.response_headers, "content-type"),
                                      secrets)
        sha = hashlib.sha256(data).hexdigest()
        if len(data) > cap:
            notes.append(f"response body of {len(data)} bytes (decoded) over the {cap}-byte "
                         "cap: hashed, not stored")
            return "over_cap", sha
        self.blobs.put(sha, data)
        return "stored", sha


# -- one sink per store -----------------------------------------------------------------

_sinks: weakref.WeakKeyDictionary[Store, Sink] = weakref.WeakKeyDictionary()
_sinks_lock = threading.Lock()


def sink_for(store: Store) -> Sink:
    """The writer of ``store`` (created on first use with the store's capture config)."""
    sink = _sinks.get(store)
    if sink is None:
        with _sinks_lock:
            sink = _sinks.get(store)
            if sink is None:
                sink = Sink(store, config_for(store))
                _sinks[store] = sink
    return sink


def forget_sink(store: Store) -> None:
    """Drop the writer of ``store`` (its configuration changed)."""
    with _sinks_lock:
        old = _sinks.pop(store, None)
    if old is not None:
        old.flush()


@contextmanager
def recording(store: Store, run_id: int, task_id: int) -> Iterator[RunCapture | None]:
    """Capture the HTTP exchanges made in this context as run ``run_id`` of ``task_id``.

    Yields None (and captures nothing) when capture is disabled for the store. On exit,
    waits until the run's exchanges are written.
    """
    config = config_for(store)
    if not config.enabled:
        yield None
        return
    from tether.capture.transports import install

    install()
    sink = sink_for(store)
    cap = RunCapture(sink, run_id, task_id, config=config)
    token = _current.set(cap)
    try:
        yield cap
    finally:
        _current.reset(token)
        for tee in list(cap.open):  # responses the agent never closed: record them now
            tee.abandon()
        if cap.made and not sink.flush():
            log.warning("HTTP exchanges of run %s still being written after 120 s", run_id)
        if cap.secrets:
            _recent_secrets[run_id] = frozenset(cap.secrets)
            while len(_recent_secrets) > 1024:
                _recent_secrets.pop(next(iter(_recent_secrets)), None)


_recent_secrets: dict[int, frozenset[bytes]] = {}
"""Secret values seen by recently finished runs, for :func:`scrub_reason`."""


def scrub_reason(run_id: int, text: str) -> str:
    """``text`` (a failure reason about to be stored) without the secret values the run's
    HTTP requests carried: an HTTP error message names the URL, query string and all."""
    secrets = _recent_secrets.pop(run_id, None)
    if not secrets or not text:
        return text
    return scrub_text(text, set(secrets))


@contextmanager
def activate(cap: RunCapture) -> Iterator[RunCapture]:
    """Make ``cap`` the current capture in this context (used by replay)."""
    from tether.capture.transports import install

    install()
    token = _current.set(cap)
    try:
        yield cap
    finally:
        _current.reset(token)


def bind(coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
    """``coro`` carrying this context's capture onto whatever loop runs it (coroutine
    agents run on a shared loop thread, which has its own context)."""
    cap = _current.get()
    if cap is None:
        return coro

    async def bound() -> T:
        token = _current.set(cap)
        try:
            return await coro
        finally:
            _current.reset(token)

    return bound()
