"""Request fingerprints: one normalised key for "the same request".

The key covers the method, the URL with its query sorted (and configured parameters such
as timestamps or nonces left out), the selected headers, and the body: canonical JSON
(sorted keys, configured fields left out), sorted form fields, or the raw bytes. It is
computed from the *redacted* request, so a rotated API key is still the same request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_url(url: str, ignore_query: Iterable[str] = ()) -> str:
    """Lower-case scheme and host, no default port, query sorted, ignored params dropped."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    ignored = {q.lower() for q in ignore_query}
    pairs = sorted(
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in ignored
    )
    return urlunsplit((scheme, netloc, parts.path or "/", urlencode(pairs), ""))


def _drop(doc: Any, ignored: set[str]) -> Any:
    if isinstance(doc, dict):
        return {k: _drop(v, ignored) for k, v in doc.items() if k.lower() not in ignored}
    if isinstance(doc, list):
        return [_drop(v, ignored) for v in doc]
    return doc


def canonical_json(data: bytes, ignore_fields: Iterable[str] = ()) -> str | None:
    """Canonical JSON text of ``data`` (sorted keys, ignored fields removed), or None if
    ``data`` is not JSON."""
    first = data.lstrip()[:1]
    if not first or first not in b'{["-0123456789tfn':
        return None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    ignored = {f.lower() for f in ignore_fields}
    if ignored:
        doc = _drop(doc, ignored)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_body(
    data: bytes | None, content_type: str, ignore_fields: Iterable[str] = ()
) -> str:
    """The body part of a fingerprint."""
    if not data:
        return ""
    text = canonical_json(data, ignore_fields)
    if text is not None:
        return "json:" + text
    if "form-urlencoded" in content_type.lower():
        try:
            ignored = {f.lower() for f in ignore_fields}
            pairs = sorted(
                (k, v)
                for k, v in parse_qsl(data.decode(), keep_blank_values=True)
                if k.lower() not in ignored
            )
            return "form:" + urlencode(pairs)
        except UnicodeDecodeError:
            pass
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fingerprint(
    method: str,
    url: str,
    headers: Sequence[Sequence[str]],
    body: bytes | None,
    *,
    selected_headers: Iterable[str] = ("accept",),
    ignore_query: Iterable[str] = (),
    ignore_fields: Iterable[str] = (),
) -> str:
    """The SHA-256 (hex) of the normalised request."""
    wanted = {h.lower() for h in selected_headers}
    content_type = ""
    picked = []
    for name, value in headers:
        low = name.lower()
        if low == "content-type":
            content_type = value
        if low in wanted:
            picked.append(f"{low}:{value.strip()}")
    picked.sort()
    key = "\n".join(
        [
            method.upper(),
            normalise_url(url, ignore_query),
            "|".join(picked),
            canonical_body(body, content_type, ignore_fields),
        ]
    )
    return hashlib.sha256(key.encode()).hexdigest()
