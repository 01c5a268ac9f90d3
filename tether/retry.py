"""Retry as pure functions: classify a failure, then decide when (or whether) to run again."""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass
from typing import Any

from tether.errors import OutputError, Retryable, Terminal
from tether.store.records import FailureClass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How an agent's retryable failures are retried."""

    max_attempts: int = 3
    """Runs in all, the first included, before a retryable failure becomes final."""
    initial_delay: float = 1.0
    """Seconds before the first retry."""
    multiplier: float = 2.0
    """Each further retry waits this many times longer than the one before."""
    max_delay: float = 300.0
    """No wait is longer than this, in seconds."""
    jitter: float = 0.2
    """Each wait is scaled by a random factor in ``[1 - jitter, 1 + jitter]``, so retries
    of many runs that failed together do not hit the recovering service together."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def delay(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(base, self.max_delay))

    def retry_at(self, attempt: int, now: float) -> float | None:
        """When to run again after attempt ``attempt`` failed retryably; None if spent."""
        if attempt >= self.max_attempts:
            return None
        return now + self.delay(attempt)


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified failure: retryable or terminal, with a reason that keeps the cause."""

    cls: FailureClass
    reason: str

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed."""
        return self.cls is FailureClass.RETRYABLE




def _retry_status(code: int) -> bool:
    # 408 and 429 say "not now"; a 5xx says the server failed, not the request.
    return code in (408, 429) or 500 <= code < 600


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _http_status_retryable(exc: BaseException) -> bool | None:
    """True/False for an httpx or requests HTTP error by status; None if not one."""
    httpx = sys.modules.get("httpx")
    if httpx is not None:
        if isinstance(exc, httpx.HTTPStatusError):
            return _retry_status(exc.response.status_code)
        if isinstance(exc, httpx.TransportError):  # connect, read, timeouts, protocol
            return True
    requests = sys.modules.get("requests")
    if requests is not None:
        if isinstance(exc, requests.HTTPError):
            response = exc.response
            return response is not None and _retry_status(response.status_code)
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
    return None


def classify(exc: BaseException, *, retry_on: tuple[type[BaseException], ...] = ()) -> Failure:
    """Classify an exception an agent raised.

    ``Retryable`` and ``Terminal`` say so themselves. Then ``retry_on`` types, network
    errors, timeouts and HTTP 408, 429 and 5xx from httpx or requests are retryable;
    anything else is terminal (a bug does not fix itself by running again).
    """
    if isinstance(exc, Retryable):
        return Failure(FailureClass.RETRYABLE, exc.reason)
    if isinstance(exc, Terminal):
        return Failure(FailureClass.TERMINAL, exc.reason)
    if isinstance(exc, OutputError):
        return Failure(FailureClass.TERMINAL, f"output cannot be stored: {exc}")
    if retry_on and isinstance(exc, retry_on):
        return Failure(FailureClass.RETRYABLE, _describe(exc))
    http = _http_status_retryable(exc)
    if http is not None:
        return Failure(FailureClass.RETRYABLE if http else FailureClass.TERMINAL, _describe(exc))
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return Failure(FailureClass.RETRYABLE, _describe(exc))
    return Failure(FailureClass.TERMINAL, _describe(exc))
