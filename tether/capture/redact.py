"""Redaction: secrets are replaced before anything is written (database row or blob).

Three layers, because a secret can travel in more than one place:

1. by *name*: sensitive headers (Authorization, Cookie, Set-Cookie, API-key and token
   style names), query parameters and JSON / form body fields;
2. by *value*: every secret value found by name in a run's requests is also scrubbed
   wherever else it appears (a server that echoes the Authorization header back, a
   token in a URL path), for the rest of that run;
3. configured extra names (``capture_redact_headers`` / ``capture_redact_fields``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "[REDACTED]"
_REDACTED_B = REDACTED.encode()

# Exact header names (lower case), then substrings that make a header name sensitive.
_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
_HEADER_PARTS = ("api-key", "api_key", "apikey", "token", "secret", "password", "auth",
                 "session", "signature", "credential")
# Body fields and query parameters: exact names, then suffixes. Suffixes rather than
# substrings so that `max_tokens` / `prompt_tokens` (LLM APIs) are left alone; pagination
# tokens are not secrets, and redacting them would make page 1 and page 2 one request.
_FIELDS = frozenset(
    {"password", "passwd", "secret", "client_secret", "api_key", "apikey", "api-key",
     "access_token", "refresh_token", "id_token", "token", "authorization", "private_key",
     "cookie"}
)
_QUERY = _FIELDS | {"key", "sig", "signature", "x-amz-signature", "x-amz-credential"}
_FIELD_SUFFIXES = ("_token", "-token", "secret", "password", "passwd", "api_key", "apikey",
                   "api-key", "secret_key", "private_key", "access_key")
_NOT_SECRET = frozenset(
    {"page_token", "next_page_token", "prev_page_token", "next_token", "continuation_token",
     "sync_token", "pagetoken", "nextpagetoken"}
)

MIN_SECRET = 6
"""Shorter values are not scrubbed by value elsewhere (they would match ordinary text)."""


class Redactor:
    """Redacts headers, URLs and bodies by the built-in and configured names."""

    def __init__(self, headers: Iterable[str] = (), fields: Iterable[str] = ()) -> None:
        self._headers = _HEADERS | {h.lower() for h in headers}
        self._fields = _FIELDS | {f.lower() for f in fields}
        self._query = _QUERY | self._fields
        self._header_cache: dict[str, bool] = {}
        # A cheap pre-check before parsing a body: does any sensitive-looking name occur?
        # (Plain substring tests on the lower-cased bytes: a regex alternation over a
        # 1 MB body costs 100x more.)
        self._hints = tuple(sorted({n.encode() for n in self._fields}
                                   | {b"token", b"secret", b"password", b"passwd", b"key"}))

    # -- names ----------------------------------------------------------------------

    def header_is_secret(self, name: str) -> bool:
        known = self._header_cache.get(name)
        if known is not None:
            return known
        low = name.lower()
        # `...-key` headers are keys: X-Functions-Key, Ocp-Apim-Subscription-Key.
        secret = (low in self._headers or low.endswith("key")
                  or any(part in low for part in _HEADER_PARTS))
        if len(self._header_cache) < 4096:  # header names repeat; bound it all the same
            self._header_cache[name] = secret
        return secret

    def field_is_secret(self, name: str) -> bool:
        low = name.lower()
        if low in self._fields:
            return True
        return low.endswith(_FIELD_SUFFIXES) and low not in _NOT_SECRET

    def query_is_secret(self, name: str) -> bool:
        return name.lower() in self._query or self.field_is_secret(name)

    # -- headers and URLs ------------------------------------------------------------

    def headers(
        self, items: Iterable[tuple[str, str]], secrets: set[bytes]
    ) -> list[list[str]]:
        """Headers with sensitive values replaced; their values are added to ``secrets``."""
        out: list[list[str]] = []
        for name, value in items:
            if self.header_is_secret(name):
                _remember(value, secrets, header=name)
                out.append([name, REDACTED])
            else:
                out.append([name, value])
        return out

    def url(self, url: str, secrets: set[bytes]) -> str:
        """``url`` with sensitive query parameters (and user:password) replaced."""
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                user, password = userinfo.split(":", 1)
                _remember(password, secrets)
                netloc = f"{user}:{REDACTED}@{host}"
        if not parts.query:
            return urlunsplit(parts._replace(netloc=netloc)) if netloc != parts.netloc else url
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        changed = False
        kept = []
        for k, v in pairs:
            if self.query_is_secret(k):
                _remember(v, secrets)
                kept.append((k, REDACTED))
                changed = True
            else:
                kept.append((k, v))
        if not changed and netloc == parts.netloc:
            return url
        query = urlencode(kept, safe="[]") if changed else parts.query
        return urlunsplit(parts._replace(netloc=netloc, query=query))

    # -- bodies ---------------------------------------------------------------------

    def body(self, data: bytes, content_type: str, secrets: set[bytes]) -> bytes:
        """``data`` with sensitive JSON / form fields replaced (their values are added to
        ``secrets``); other bodies unchanged. Value scrubbing is :func:`scrub`."""
        if not data:
            return data
        low = data.lower()
        if not any(h in low for h in self._hints):
            return data
        ctype = content_type.lower()
        if "form-urlencoded" in ctype:
            return self._form(data, secrets)
        stripped = data.lstrip()[:1]
        if "json" in ctype or stripped in (b"{", b"["):
            try:
                doc = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                return data
            found = self._json(doc, secrets)
            if found:
                return json.dumps(found[1], ensure_ascii=False, separators=(",", ":")).encode()
        return data

    def _json(self, doc: Any, secrets: set[bytes]) -> tuple[bool, Any] | None:
        """(True, redacted copy) when something was redacted, else None."""
        if isinstance(doc, dict):
            changed = False
            out: dict[str, Any] = {}
            for k, v in doc.items():
                if isinstance(k, str) and self.field_is_secret(k) and not isinstance(
                    v, (dict, list)
                ):
                    if v is not None:
                        _remember(str(v), secrets)
                        out[k] = REDACTED
                        changed = True
                    else:
                        out[k] = v
                    continue
                sub = self._json(v, secrets)
                if sub is not None:
                    changed = True
                    out[k] = sub[1]
                else:
                    out[k] = v
            return (True, out) if changed else None
        if isinstance(doc, list):
            changed = False
            items = []
            for v in doc:
                sub = self._json(v, secrets)
                changed = changed or sub is not None
                items.append(sub[1] if sub is not None else v)
            return (True, items) if changed else None
        return None

    def _form(self, data: bytes, secrets: set[bytes]) -> bytes:
        try:
            pairs = parse_qsl(data.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return data
        changed = False
        out = []
        for k, v in pairs:
            if self.field_is_secret(k):
                _remember(v, secrets)
                out.append((k, REDACTED))
                changed = True
            else:
                out.append((k, v))
        return urlencode(out, safe="[]").encode() if changed else data


def _remember(value: str, secrets: set[bytes], *, header: str = "") -> None:
    """Keep a secret's value (and its token part: ``Bearer <token>``, Basic credentials)
    so that it can be scrubbed wherever else it appears."""
    value = value.strip()
    if len(value) < MIN_SECRET or value == REDACTED:
        return
    secrets.add(value.encode())
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if len(token) >= MIN_SECRET:
        secrets.add(token.encode())
        if scheme.lower() == "basic":
            try:
                _user, _, password = base64.b64decode(token, validate=True).decode().partition(
                    ":"
                )
            except (binascii.Error, UnicodeDecodeError):
                return
            if len(password) >= MIN_SECRET:
                secrets.add(password.encode())
    if header.lower() in ("cookie", "set-cookie"):
        # Cookie values one by one: `a=1; session=abcdef...`.
        for part in value.split(";"):
            _, eq, val = part.partition("=")
            if eq and len(val.strip()) >= MIN_SECRET:
                secrets.add(val.strip().encode())


def scrub(data: bytes, secrets: set[bytes]) -> bytes:
    """``data`` with every known secret value replaced by ``[REDACTED]``."""
    if not data or not secrets:
        return data
    # Longest first, so a token inside a longer header value is not left half-replaced.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in data:
            data = data.replace(secret, _REDACTED_B)
    return data


def scrub_text(text: str, secrets: set[bytes]) -> str:
    """:func:`scrub` for text (URLs, header values)."""
    if not secrets:
        return text
    raw = text.encode()
    out = scrub(raw, secrets)
    return text if out is raw else out.decode(errors="replace")
