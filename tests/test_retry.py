"""Retry rules as pure functions: the backoff schedule and the classification of failures."""

from __future__ import annotations

import random

import httpx
import pytest
import requests

from tether import OutputError, Retryable, RetryPolicy, Terminal
from tether.retry import classify
from tether.store import FailureClass


def test_delay_grows_exponentially_from_the_initial_delay() -> None:
    policy = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=1000, jitter=0)

    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_delay_is_capped_by_max_delay() -> None:
    policy = RetryPolicy(initial_delay=1.0, multiplier=10.0, max_delay=50.0, jitter=0)

    assert [policy.delay(n) for n in range(1, 5)] == [1.0, 10.0, 50.0, 50.0]


def test_a_multiplier_of_one_is_a_constant_delay() -> None:
    policy = RetryPolicy(initial_delay=3.0, multiplier=1.0, jitter=0)

    assert {policy.delay(n) for n in range(1, 10)} == {3.0}


def test_jitter_stays_within_its_bounds_and_varies() -> None:
    policy = RetryPolicy(initial_delay=10.0, multiplier=2.0, max_delay=1000, jitter=0.2)
    rng = random.Random(7)

    second = [policy.delay(2, rng=rng) for _ in range(500)]

    assert all(16.0 <= d <= 24.0 for d in second)
    assert max(second) - min(second) > 4.0  # actually spread, not a constant
    assert 19.0 < sum(second) / len(second) < 21.0


def test_jitter_never_exceeds_max_delay() -> None:
    policy = RetryPolicy(initial_delay=100.0, max_delay=100.0, jitter=0.5)
    rng = random.Random(1)

    delays = [policy.delay(3, rng=rng) for _ in range(200)]

    assert all(50.0 <= d <= 100.0 for d in delays)


def test_retry_at_is_none_once_attempts_are_spent() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=5.0, multiplier=2.0, jitter=0)

    assert policy.retry_at(1, now=1000.0) == 1005.0
    assert policy.retry_at(2, now=1000.0) == 1010.0
    assert policy.retry_at(3, now=1000.0) is None
    assert policy.retry_at(4, now=1000.0) is None
    assert RetryPolicy(max_attempts=1).retry_at(1, now=0.0) is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_attempts", 0, "max_attempts must be at least 1"),
        ("initial_delay", -1.0, "delays must not be negative"),
        ("max_delay", -1.0, "delays must not be negative"),
        ("multiplier", 0.5, "multiplier must be at least 1"),
        ("jitter", 1.5, "jitter must be between 0 and 1"),
    ],
)
def test_invalid_policies_are_refused(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


def test_replace_returns_a_changed_copy() -> None:
    policy = RetryPolicy()

    changed = policy.replace(max_attempts=7)

    assert (changed.max_attempts, policy.max_attempts) == (7, 3)
    assert changed.initial_delay == policy.initial_delay


def _http_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://service.test/x")
    response = httpx.Response(status, request=request)
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        return exc
    raise AssertionError("no error raised")


def _requests_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.url = "http://service.test/x"
    try:
        response.raise_for_status()
    except requests.HTTPError as exc:
        return exc
    raise AssertionError("no error raised")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_http_statuses_that_say_not_now_are_retryable(status: int) -> None:
    assert classify(_http_error(status)).cls == FailureClass.RETRYABLE
    assert classify(_requests_error(status)).cls == FailureClass.RETRYABLE


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_http_statuses_that_say_the_request_is_wrong_are_terminal(status: int) -> None:
    assert classify(_http_error(status)).cls == FailureClass.TERMINAL
    assert classify(_requests_error(status)).cls == FailureClass.TERMINAL


def test_the_reason_keeps_the_exception_type_and_message() -> None:
    failure = classify(_http_error(503))

    assert failure.reason.startswith("HTTPStatusError: Server error '503 Service Unavailable'")
    assert failure.retryable
    assert classify(KeyError("missing")).reason == "KeyError: 'missing'"
    assert classify(RuntimeError()).reason == "RuntimeError"


def test_the_agents_own_classification_wins() -> None:
    assert (classify(Retryable("busy")).cls, classify(Retryable("busy")).reason) == (
        FailureClass.RETRYABLE,
        "busy",
    )
    assert (classify(Terminal("bad input")).cls, classify(Terminal("bad input")).reason) == (
        FailureClass.TERMINAL,
        "bad input",
    )
    assert classify(Terminal("x"), retry_on=(Exception,)).cls == FailureClass.TERMINAL


def test_network_errors_and_timeouts_are_retryable_other_errors_terminal() -> None:
    request = httpx.Request("GET", "http://service.test/")
    assert classify(httpx.ConnectError("refused", request=request)).retryable
    assert classify(httpx.ReadTimeout("slow", request=request)).retryable
    assert classify(requests.ConnectionError("refused")).retryable
    assert classify(requests.Timeout("slow")).retryable
    assert classify(TimeoutError()).retryable
    assert classify(ConnectionRefusedError()).retryable
    assert not classify(ValueError("bad")).retryable
    assert not classify(ZeroDivisionError()).retryable


def test_retry_on_makes_chosen_types_and_their_subclasses_retryable() -> None:
    class Locked(Exception):
        pass

    class RowLocked(Locked):
        pass

    failure = classify(RowLocked("row 3"), retry_on=(Locked,))
    assert (failure.cls, failure.reason) == (FailureClass.RETRYABLE, "RowLocked: row 3")
    assert classify(RowLocked("row 3")).cls == FailureClass.TERMINAL


def test_an_output_error_is_terminal_and_says_so() -> None:
    failure = classify(OutputError("output.when is a datetime.datetime"))

    assert failure.cls == FailureClass.TERMINAL
    assert failure.reason == "output cannot be stored: output.when is a datetime.datetime"
