"""The demo's world: a small local HTTP service that the demo agents call.

It stands in for the systems a real quote depends on (an identity registry, a sanctions
screening service, a credit bureau, a rating engine, a policy system) and, like them, it
is unreliable: some calls are answered with ``503 Service Unavailable``. Which ones is
fixed per case, not random, so the demo tells the same story every time:

- ``case-002``'s applicant is on the (fictional) sanctions list: KYC fails terminally;
- the credit bureau fails the first call for cases 1, 4, 7, … (risk retries once);
- the identity registry fails the first call, and the rating engine the first two calls,
  for cases 3, 6, 9, … (KYC retries once, pricing twice).

Endpoints (JSON)::

    GET  /identity/<case>                 the applicant's identity record
    GET  /sanctions?name=..&case=..       screening result: {"match": bool, ...}
    GET  /credit/<case>                   a credit report
    GET  /rates/<product>?case=..         the product's rate table, as quoted for a case
    POST /quotes                          issue a quote: {"case": .., "premium": ..}
    GET  /quotes/<case>                   the quote issued for a case (404: none yet)

The service runs on ``127.0.0.1`` on a free port, in a daemon thread, for as long as the
:class:`DemoService` context manager is open.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

# -- the cases -------------------------------------------------------------------------

_CLEAN_NAMES = (
    "Amelia Hart",
    "Jonas Berg",
    "Priya Raman",
    "Lucas Moreau",
    "Sofia Conti",
    "Tomasz Nowak",
    "Hana Sato",
)
SANCTIONED_CASE = 2
"""The one case whose applicant is on the sanctions list."""
_SANCTIONS = {
    "Viktor Rusk": "EU consolidated list, entry EU.4471.23",
}
_COUNTRIES = ("NL", "DE", "FR", "IT", "PL", "SE", "ES")
_PRODUCTS = ("home", "motor", "home")
_RATES = {
    "home": {"product": "home", "rate_per_mille": 1.45, "min_premium": 180.0, "currency": "EUR"},
    "motor": {"product": "motor", "rate_per_mille": 38.0, "min_premium": 240.0, "currency": "EUR"},
}


def case_id(n: int) -> str:
    """The key of demo case number ``n`` (1-based): ``case-001``."""
    return f"case-{n:03d}"


def case_number(case: str) -> int | None:
    """The number of a demo case key, or None if it is not one."""
    m = re.fullmatch(r"case-(\d{3,})", case)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def applicant(n: int) -> str:
    if n == SANCTIONED_CASE:
        return "Viktor Rusk"
    return _CLEAN_NAMES[(n - 1) % len(_CLEAN_NAMES)]


def application(n: int) -> dict[str, Any]:
    """What is submitted for case ``n``: the application a broker sent."""
    product = _PRODUCTS[(n - 1) % len(_PRODUCTS)]
    sum_insured = 250_000 + 25_000 * ((n * 7) % 9) if product == "home" else 18_000 + 1_000 * n
    return {
        "case": case_id(n),
        "applicant": applicant(n),
        "product": product,
        "sum_insured": sum_insured,
    }


def _identity(n: int) -> dict[str, Any]:
    return {
        "case": case_id(n),
        "name": applicant(n),
        "country": _COUNTRIES[(n - 1) % len(_COUNTRIES)],
        "date_of_birth": f"19{60 + (n * 7) % 35}-{1 + n % 12:02d}-{1 + (n * 5) % 28:02d}",
        "document": "passport",
        "verified_at_source": True,
    }


def _credit(n: int) -> dict[str, Any]:
    score = 560 + (n * 97) % 260
    return {"case": case_id(n), "score": score, "defaults_last_5y": 1 if score < 600 else 0}


def planned_503s(route: str, n: int) -> int:
    """How many times in a row the service answers 503 to ``route`` for case ``n``."""
    if route == "credit" and n % 3 == 1:
        return 1
    if route == "identity" and n % 3 == 0:
        return 1
    if route == "rates" and n % 3 == 0:
        return 2
    return 0


# -- the service -----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStats:
    """What the service answered so far."""

    calls: int
    unavailable: int
    """Calls answered with 503."""


HOLD_LIMIT = 60.0
"""Seconds at most that :meth:`DemoService.holding_quotes` holds a quote's answer."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.latency = latency
        self.lock = threading.Lock()
        self.seen: Counter[tuple[str, str]] = Counter()
        self.calls = 0
        self.unavailable = 0
        self.quotes: dict[str, dict[str, Any]] = {}
        """The quotes issued, by case (the latest)."""
        self.issued: Counter[str] = Counter()
        """How many times a quote was issued for each case: the side effect that must
        happen once."""
        self.answer_quotes = threading.Event()
        """Set: quotes are answered (after ``latency``); cleared by
        :meth:`DemoService.holding_quotes`."""
        self.answer_quotes.set()

    def should_fail(self, route: str, case: str) -> bool:
        """Count a call to ``route`` for ``case``; True if this one is to get a 503."""
        n = case_number(case)
        with self.lock:
            self.calls += 1
            self.seen[(route, case)] += 1
            fail = n is not None and self.seen[(route, case)] <= planned_503s(route, n)
            if fail:
                self.unavailable += 1
            return fail


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the demo prints its own story
        return

    def _send(self, status: int, body: Any) -> None:
        if self.server.latency:
            # After the call took effect (a quote is issued already): a caller that dies
            # while waiting leaves an effect it never heard of, as with a slow real system.
            time.sleep(self.server.latency)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)

    def _unavailable(self, route: str) -> None:
        self._send(503, {"error": f"{route} service temporarily unavailable"})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        route = parts[0] if parts else ""
        if route in ("identity", "credit") and len(parts) == 2:
            case = parts[1]
            if self.server.should_fail(route, case):
                return self._unavailable(route)
            n = case_number(case)
            if n is None:
                return self._send(404, {"error": f"no {route} record for {case!r}"})
            return self._send(200, _identity(n) if route == "identity" else _credit(n))
        if route == "sanctions" and len(parts) == 1:
            name = query.get("name", "")
            if self.server.should_fail(route, query.get("case", "")):
                return self._unavailable(route)
            entry = _SANCTIONS.get(name)
            return self._send(
                200,
                {
                    "name": name,
                    "match": entry is not None,
                    "entry": entry,
                    "lists": ["EU consolidated", "UN SC", "OFAC SDN"],
                },
            )
        if route == "rates" and len(parts) == 2:
            product = parts[1]
            if self.server.should_fail(route, query.get("case", "")):
                return self._unavailable(route)
            rates = _RATES.get(product)
            if rates is None:
                return self._send(404, {"error": f"no rate table for product {product!r}"})
            return self._send(200, rates)
        if route == "quotes" and len(parts) == 2:
            self.server.should_fail(route, "")
            with self.server.lock:
                issued = self.server.quotes.get(parts[1])
            if issued is None:
                return self._send(404, {"error": f"no quote issued for {parts[1]!r}"})
            return self._send(200, issued)
        self.server.should_fail("unknown", "")
        return self._send(404, {"error": f"no such endpoint: GET {url.path}"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._send(400, {"error": "body is not JSON"})
        if url.path == "/quotes" and isinstance(body, dict):
            case = str(body.get("case", ""))
            if self.server.should_fail("quotes", case):
                return self._unavailable("quotes")
            if case_number(case) is None or not isinstance(body.get("premium"), (int, float)):
                return self._send(400, {"error": "a quote needs a demo case and a premium"})
            quote = {
                "quote_id": f"Q-{case.removeprefix('case-')}",
                "case": case,
                "premium": body["premium"],
                "currency": body.get("currency", "EUR"),
                "valid_days": 30,
            }
            with self.server.lock:
                self.server.quotes[case] = quote
                self.server.issued[case] += 1
            self.server.answer_quotes.wait(timeout=HOLD_LIMIT)
            return self._send(201, quote)
        self.server.should_fail("unknown", "")
        return self._send(404, {"error": f"no such endpoint: POST {url.path}"})


class DemoService:
    """The demo's local HTTP service: ``with DemoService() as svc: ... svc.url ...``.

    ``latency``: seconds every answer waits before it is sent (a slow back end), after the
    call took effect.
    """

    def __init__(self, *, latency: float = 0.0) -> None:
        if latency < 0:
            raise ValueError(f"latency must be 0 or more seconds (got {latency!r})")
        self.latency = latency
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._last = ServiceStats(0, 0)

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:51234`` (while started)."""
        if self._server is None:
            raise RuntimeError("the demo service is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def stats(self) -> ServiceStats:
        """Calls answered so far, and how many of them with 503."""
        if self._server is None:
            return self._last
        with self._server.lock:
            return ServiceStats(self._server.calls, self._server.unavailable)

    @contextmanager
    def holding_quotes(self) -> Iterator[None]:
        """While inside, a quote is issued at once but answered only on leaving (or after
        :data:`HOLD_LIMIT` seconds): a caller that dies meanwhile never hears of the quote
        it caused, however late its death comes (the tests kill a worker there)."""
        if self._server is None:
            raise RuntimeError("the demo service is not running")
        gate = self._server.answer_quotes
        gate.clear()
        try:
            yield
        finally:
            gate.set()

    @property
    def quotes_issued(self) -> dict[str, int]:
        """How many times a quote was issued, by case (each should be once)."""
        if self._server is None:
            return {}
        with self._server.lock:
            return dict(self._server.issued)

    def start(self) -> DemoService:
        """Start serving on a free port of 127.0.0.1."""
        if self._server is not None:
            return self
        self._server = _Server(self.latency)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="tether-demo-service",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is None:
            return
        self._last = self.stats
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> DemoService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
