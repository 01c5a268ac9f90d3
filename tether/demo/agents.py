"""The demo's agents: four teams whose triggers compose into a quote.

::

    kyc      (compliance) ──kyc.passed─────┐
    risk     (risk)       ──risk.scored────┼──> quote (sales)
    pricing  (pricing)    ──pricing.priced─┘

Each agent is a plain function of a :class:`tether.Context`. They call the demo's local
HTTP service (:mod:`tether.demo.service`) with httpx and ``raise_for_status()``: a 503 is
classified retryable by the harness and retried with backoff; a sanctions hit is raised
as :class:`tether.Terminal`, so ``kyc.passed`` never fires and the quote never runs.

The service's base URL is set by the demo runner (:func:`use_service`), or read from the
``TETHER_DEMO_URL`` environment variable when the agents run elsewhere.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

import tether

URL_ENV = "TETHER_DEMO_URL"

DEMO_RETRY = tether.RetryPolicy(max_attempts=4, initial_delay=0.1, multiplier=2.0, jitter=0.1)
"""Short waits so the demo finishes in seconds; a real agent would wait longer."""

_service_url: str | None = None

_LOADING = {"low": 1.0, "medium": 1.25, "high": 1.6}


def use_service(url: str | None) -> None:
    """Point the demo agents at the service at ``url`` (None: back to ``TETHER_DEMO_URL``)."""
    global _service_url
    _service_url = url.rstrip("/") if url else None


def service_url() -> str:
    """The demo service's base URL, as the agents will use it."""
    url = _service_url or os.environ.get(URL_ENV, "").rstrip("/")
    if not url:
        raise tether.Terminal(
            f"the demo service is not running here: run `tether demo`, or set {URL_ENV}"
        )
    return url


def _call(method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
          absent_ok: bool = False) -> Any:
    # trust_env=False: the service is on 127.0.0.1; no proxy setting must get in the way.
    with httpx.Client(base_url=service_url(), timeout=5.0, trust_env=False) as client:
        response = client.request(method, path, params=params, json=json)
        if absent_ok and response.status_code == 404:
            return None
        response.raise_for_status()  # 5xx -> retryable, 4xx -> terminal (harness rules)
        return response.json()


def _application(ctx: tether.Context) -> dict[str, Any]:
    data = ctx.input
    if not isinstance(data, dict):
        raise tether.Terminal(f"task {ctx.agent}/{ctx.key} has no application as its input")
    return data


@tether.agent(team="compliance", emits="kyc.passed", retry=DEMO_RETRY)
def kyc(ctx: tether.Context) -> dict[str, Any]:
    """Know your customer: verify the applicant's identity and screen the sanctions lists."""
    app = _application(ctx)
    with ctx.step("fetch identity record", input={"case": ctx.key}) as step:
        identity = step.record(_call("GET", f"/identity/{ctx.key}"))
    if identity["name"] != app["applicant"]:
        raise tether.Terminal(
            f"identity mismatch: the application names {app['applicant']!r}, the registry "
            f"{identity['name']!r}"
        )
    with ctx.step("screen sanctions list", input={"name": identity["name"]}) as step:
        screening = step.record(
            _call("GET", "/sanctions", params={"name": identity["name"], "case": ctx.key})
        )
    if screening["match"]:
        raise tether.Terminal(f"sanctions match: {identity['name']} ({screening['entry']})")
    return {
        "verified": True,
        "name": identity["name"],
        "country": identity["country"],
        "lists_screened": screening["lists"],
    }


@tether.agent(team="risk", emits="risk.scored", retry=DEMO_RETRY)
def risk(ctx: tether.Context) -> dict[str, Any]:
    """Score the applicant's risk from a credit report."""
    _application(ctx)
    with ctx.step("pull credit report", input={"case": ctx.key}) as step:
        report = step.record(_call("GET", f"/credit/{ctx.key}"))
    with ctx.step("score risk", input=report) as step:
        score = int(report["score"])
        band = "low" if score >= 700 else "medium" if score >= 620 else "high"
        if report["defaults_last_5y"]:
            band = "high"
        scored = step.record({"credit_score": score, "band": band, "loading": _LOADING[band]})
    return scored


@tether.agent(team="pricing", emits="pricing.priced", retry=DEMO_RETRY)
def pricing(ctx: tether.Context) -> dict[str, Any]:
    """Price the cover asked for from the product's rate table."""
    app = _application(ctx)
    with ctx.step("fetch rate table", input={"product": app["product"]}) as step:
        rates = step.record(_call("GET", f"/rates/{app['product']}", params={"case": ctx.key}))
    with ctx.step("price cover", input={"sum_insured": app["sum_insured"]}) as step:
        base = round(app["sum_insured"] * rates["rate_per_mille"] / 1000, 2)
        priced = step.record(
            {
                "product": app["product"],
                "sum_insured": app["sum_insured"],
                "base_premium": base,
                "min_premium": rates["min_premium"],
                "currency": rates["currency"],
            }
        )
    return priced


@tether.agent(
    team="sales",
    subscribes=["kyc.passed", "risk.scored", "pricing.priced"],
    retry=DEMO_RETRY,
)
def quote(ctx: tether.Context) -> dict[str, Any]:
    """Issue the quote once compliance, risk and pricing have all decided."""
    with ctx.step("combine upstream decisions", input=dict(ctx.upstream_tasks)) as step:
        identity = ctx.upstream["kyc.passed"]
        scored = ctx.upstream["risk.scored"]
        priced = ctx.upstream["pricing.priced"]
        premium = max(priced["min_premium"], round(priced["base_premium"] * scored["loading"], 2))
        step.record(
            {
                "base_premium": priced["base_premium"],
                "loading": scored["loading"],
                "premium": premium,
            }
        )
    # Keyed: if an earlier run issued the quote, it is not issued twice. If an earlier run
    # died during the call (nobody knows whether the quote went out), the policy system is
    # asked first, and the quote it shows is recorded instead of issuing another.
    issued = ctx.once(
        f"issue-quote:{ctx.key}",
        lambda: _call(
            "POST", "/quotes",
            json={"case": ctx.key, "premium": premium, "currency": priced["currency"]},
        ),
        name="issue quote",
        input={"premium": premium},
        reconcile=lambda: _call("GET", f"/quotes/{ctx.key}", absent_ok=True),
    )
    return {
        "quote_id": issued["quote_id"],
        "applicant": identity["name"],
        "product": priced["product"],
        "risk_band": scored["band"],
        "premium": premium,
        "currency": priced["currency"],
    }


AGENTS: tuple[tether.Agent, ...] = (kyc, risk, pricing, quote)
"""Every demo agent, upstream first."""
ROOTS: tuple[tether.Agent, ...] = (kyc, risk, pricing)
"""The agents work is submitted to."""
