"""Secrets never reach the store or the blobs: planted in headers, query, cookies and JSON
fields, echoed back by the server, the bytes are absent from every file written."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import requests
from sqlalchemy import select

import tether
from tests.capture.world import World
from tether import Context, Project, WorkerStats
from tether.capture import REDACTED, Redactor, body, config_for, exchanges
from tether.capture.redact import scrub
from tether.store.schema_capture import http_exchanges

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

SECRETS = {
    "bearer": "sk-planted-BEARER-5ecret-0001",
    "apikey": "planted-XAPIKEY-5ecret-0002",
    "cookie": "planted-COOKIE-5ecret-0003",
    "query": "planted-QUERY-5ecret-0004",
    "field": "planted-FIELD-5ecret-0005",
    "custom": "planted-CUSTOM-5ecret-0006",
    "basic": "planted-BASIC-5ecret-0007",
}


def _agent(world: World) -> tether.Agent:
    @tether.agent
    def leaky(ctx: Context) -> object:
        headers = {
            "Authorization": f"Bearer {SECRETS['bearer']}",
            "X-API-Key": SECRETS["apikey"],
            "Cookie": f"session={SECRETS['cookie']}",
            "X-Tenant-Signature": SECRETS["custom"],
        }
        with ctx.step("call"):
            a = httpx.post(
                f"{world.url}/echo",
                params={"api_key": SECRETS["query"], "page": "2"},
                headers=headers,
                json={"user": "ada", "password": SECRETS["field"], "max_tokens": 7},
            ).json()
            b = requests.get(f"{world.url}/echo", auth=("ada", SECRETS["basic"]),
                             timeout=5).json()
        # The agent itself still sees everything the server said.
        a_headers = {k.lower(): v for k, v in a["headers"].items()}
        b_headers = {k.lower(): v for k, v in b["headers"].items()}
        return {"echoed": a_headers["x-api-key"] == SECRETS["apikey"],
                "basic": b_headers["authorization"].startswith("Basic ")}

    return leaky


def _assert_clean(blob: bytes, where: str) -> None:
    for name, secret in SECRETS.items():
        assert secret.encode() not in blob, f"{name} secret found in {where}"
    assert b"cookie-secret-777" not in blob, f"Set-Cookie value found in {where}"


def test_planted_secrets_never_reach_the_database_or_the_blobs(
    make_project: MakeProject, run_idle: RunIdle, world: World, tmp_path: Path, store_url: str
) -> None:
    project = make_project([_agent(world)], database_url=store_url)
    sub = project.submit("leaky", "k")
    run_idle(project)
    [run] = project.store.runs_of(sub.task_id)
    assert run.output == {"echoed": True, "basic": True}

    found = exchanges(project.store, run.id)
    assert len(found) == 2
    # Every byte of every row, as the database returns it.
    with project.store.engine.connect() as conn:
        rows = conn.execute(select(http_exchanges)).all()
    assert len(rows) == 2
    _assert_clean(repr(rows).encode(), "the exchange rows")
    blob_root = Path(config_for(project.store).blobs)
    blobs = [p for p in blob_root.rglob("*") if p.is_file()]
    assert len(blobs) == 3  # the JSON request, two echoes
    for p in blobs:
        _assert_clean(p.read_bytes(), f"blob {p.name}")
    project.close()
    # And the database files themselves (SQLite: the file and its write-ahead log).
    for p in tmp_path.rglob("tether.db*"):
        _assert_clean(p.read_bytes(), p.name)

    post = found[0]
    headers = {k.lower(): v for k, v in post.request_headers}
    assert headers["authorization"] == headers["x-api-key"] == headers["cookie"] == REDACTED
    assert headers["x-tenant-signature"] == REDACTED
    assert "api_key=[REDACTED]" in post.url and "page=2" in post.url
    sent = json.loads(body(project.store, post.request_sha256))
    assert sent == {"user": "ada", "password": REDACTED, "max_tokens": 7}
    echoed = json.loads(body(project.store, post.response_sha256))
    echoed_headers = {k.lower(): v for k, v in echoed["headers"].items()}
    assert echoed_headers["x-api-key"] == REDACTED  # scrubbed by value in the answer
    set_cookie = {k.lower(): v for k, v in post.response_headers}["set-cookie"]
    assert set_cookie == REDACTED


def test_configured_headers_and_fields_are_redacted_too(
    make_project: MakeProject, run_idle: RunIdle, world: World, tmp_path: Path
) -> None:
    @tether.agent
    def custom(ctx: Context) -> object:
        return httpx.post(f"{world.url}/echo", headers={"X-Account": "acct-77-private"},
                          json={"ssn": "123-45-6789", "name": "ada"}).status_code

    project = make_project([custom], capture_redact_headers=["x-account"],
                           capture_redact_fields=["ssn"])
    sub = project.submit("custom", "k")
    run_idle(project)
    [run] = project.store.runs_of(sub.task_id)
    [ex] = exchanges(project.store, run.id)
    for p in (tmp_path / ".tether" / "blobs").rglob("*"):
        if p.is_file():
            assert b"acct-77-private" not in p.read_bytes()
            assert b"123-45-6789" not in p.read_bytes()
    assert json.loads(body(project.store, ex.request_sha256)) == {"ssn": REDACTED,
                                                                   "name": "ada"}


def test_redactor_rules() -> None:
    red = Redactor()
    secrets: set[bytes] = set()
    assert red.header_is_secret("X-Goog-Api-Key") and red.header_is_secret("Set-Cookie")
    assert red.header_is_secret("Ocp-Apim-Subscription-Key")
    assert red.header_is_secret("X-Auth-Token") and red.header_is_secret("Private-Token")
    assert not red.header_is_secret("Content-Type")
    assert red.field_is_secret("client_secret") and red.field_is_secret("refresh_token")
    assert not red.field_is_secret("max_tokens") and not red.field_is_secret("next_page_token")
    basic = base64.b64encode(b"ada:hunter2-long").decode()
    red.headers([("Authorization", f"Basic {basic}")], secrets)
    assert b"hunter2-long" in secrets and basic.encode() in secrets
    assert scrub(b"pw=hunter2-long!", secrets) == b"pw=[REDACTED]!"
    assert red.url("https://u:pw-123456@h/p?token=abcdefgh&q=1", secrets) == (
        "https://u:[REDACTED]@h/p?token=[REDACTED]&q=1")
    form = red.body(b"grant_type=x&client_secret=s3cr3t-value", "application/x-www-form-urlencoded",
                    secrets)
    assert form == b"grant_type=x&client_secret=[REDACTED]"
    assert red.body(b'{"a": 1}', "application/json", secrets) == b'{"a": 1}'  # untouched


def test_a_failure_reason_naming_a_secret_url_is_scrubbed(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    world.set_json("/deny", {"error": "no"}, status=403)

    @tether.agent(max_attempts=1)
    def denied(ctx: Context) -> object:
        httpx.get(f"{world.url}/deny", params={"api_key": SECRETS["query"]}).raise_for_status()
        return None

    project = make_project([denied])
    sub = project.submit("denied", "k")
    run_idle(project)
    [run] = project.store.runs_of(sub.task_id)
    assert run.failure_reason is not None and "403" in run.failure_reason
    assert SECRETS["query"] not in run.failure_reason
    assert "[REDACTED]" in run.failure_reason
