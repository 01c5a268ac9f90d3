"""World capture: every HTTP exchange an agent makes (httpx, requests) recorded with its
run and step, secrets redacted, bodies content-addressed; replay a run against its
recorded world; tell when the world moved (drift). See docs/capture.md.

Public API::

    tether.capture.exchanges(store, run_id) -> list[Exchange]
    tether.capture.body(store_or_blobs, sha) -> bytes
    tether.capture.replayer(project, run_id) -> ReplayResult
    tether.capture.changes(store, task) -> list[Drift]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tether.capture.blobs import BlobStore, FsspecBlobs, LocalBlobs, open_blobs
from tether.capture.config import CaptureConfig, attach, config_for
from tether.capture.fingerprint import fingerprint, normalise_url
from tether.capture.queries import Exchange, body, exchanges, task_exchanges
from tether.capture.recorder import RunCapture, bind, current, recording, scrub_reason
from tether.capture.redact import REDACTED, Redactor

if TYPE_CHECKING:
    from tether.capture.changes import Change, Drift, drift
    from tether.capture.replayer import ReplayError, ReplayResult, replay

# Replay and drift import the runtime, which imports this package: load them on first use.
_LAZY = {
    "replay": "tether.capture.replayer",
    "ReplayResult": "tether.capture.replayer",
    "ReplayError": "tether.capture.replayer",
    "drift": "tether.capture.changes",
    "Drift": "tether.capture.changes",
    "Change": "tether.capture.changes",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tether.capture' has no attribute {name!r}")


__all__ = [
    "REDACTED",
    "BlobStore",
    "CaptureConfig",
    "Change",
    "Drift",
    "Exchange",
    "FsspecBlobs",
    "LocalBlobs",
    "Redactor",
    "ReplayError",
    "ReplayResult",
    "RunCapture",
    "attach",
    "bind",
    "body",
    "config_for",
    "current",
    "drift",
    "exchanges",
    "fingerprint",
    "normalise_url",
    "open_blobs",
    "recording",
    "replay",
    "scrub_reason",
    "task_exchanges",
]
