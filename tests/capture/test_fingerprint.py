"""Request fingerprints: the same request gives the same key, a different one another."""

from __future__ import annotations

from tether.capture import fingerprint, normalise_url


def _fp(method: str, url: str, body: bytes | None = None, **kw: object) -> str:
    headers = [("Content-Type", "application/json"), ("Accept", "application/json"),
               ("X-Request-Id", "random-123")]
    return fingerprint(method, url, headers, body, **kw)  # type: ignore[arg-type]


def test_query_order_host_case_and_default_port_do_not_matter() -> None:
    assert _fp("get", "HTTP://Api.Example.com:80/p?b=2&a=1") == _fp(
        "GET", "http://api.example.com/p?a=1&b=2")
    assert normalise_url("https://h:443/x?z=1&a=2") == "https://h/x?a=2&z=1"


def test_method_path_query_values_and_body_do_matter() -> None:
    base = _fp("GET", "http://h/p?a=1")
    assert base != _fp("POST", "http://h/p?a=1")
    assert base != _fp("GET", "http://h/q?a=1")
    assert base != _fp("GET", "http://h/p?a=2")
    assert _fp("POST", "http://h/p", b'{"a": 1}') != _fp("POST", "http://h/p", b'{"a": 2}')


def test_json_bodies_are_canonical() -> None:
    assert _fp("POST", "http://h/p", b'{"b": [1, 2], "a": {"y": 1, "x": 2}}') == _fp(
        "POST", "http://h/p", b'{"a":{"x":2,"y":1},"b":[1,2]}')


def test_ignored_query_parameters_and_fields() -> None:
    a = _fp("POST", "http://h/p?ts=1&q=x", b'{"nonce": "n1", "q": 1}',
            ignore_query=["ts"], ignore_fields=["nonce"])
    b = _fp("POST", "http://h/p?q=x&ts=2", b'{"q": 1, "nonce": "n2"}',
            ignore_query=["ts"], ignore_fields=["nonce"])
    assert a == b
    assert _fp("POST", "http://h/p?ts=1&q=x") != _fp("POST", "http://h/p?ts=2&q=x")


def test_only_selected_headers_count() -> None:
    url = "http://h/p"
    one = fingerprint("GET", url, [("Accept", "text/html"), ("X-Trace", "1")], None)
    two = fingerprint("GET", url, [("accept", "text/html"), ("X-Trace", "2")], None)
    other = fingerprint("GET", url, [("Accept", "application/json")], None)
    assert one == two and one != other
    assert fingerprint("GET", url, [("X-Trace", "1")], None, selected_headers=["x-trace"]) != (
        fingerprint("GET", url, [("X-Trace", "2")], None, selected_headers=["x-trace"]))


def test_form_bodies_are_sorted() -> None:
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    assert fingerprint("POST", "http://h/", form, b"b=2&a=1") == fingerprint(
        "POST", "http://h/", form, b"a=1&b=2")
