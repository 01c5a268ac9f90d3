"""The patched transports: ``httpx.HTTPTransport.handle_request``,
``httpx.AsyncHTTPTransport.handle_async_request`` and ``requests.adapters.HTTPAdapter.send``.

Patched once per process (:func:`install`); every client built on them is covered,
including SDKs (``openai``) and clients the agent creates itself. Outside a run (no
:class:`~tether.capture.recorder.RunCapture` in the context) they call the original at once.

A response body is *teed*: each chunk is handed to the agent as it arrives and kept on the
side; the exchange is recorded when the body ends or the response is closed. Nothing is
buffered before the agent sees it, so streaming responses still stream.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

from tether.capture.recorder import Collector, RawExchange, RunCapture, _current

_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Patch the httpx and requests transports (idempotent, thread-safe)."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        _patch_httpx(httpx)
        try:
            import httpx2
        except ImportError:
            pass
        else:
            _patch_httpx(httpx2)
        _patch_requests()
        _installed = True


# -- httpx --------------------------------------------------------------------------------


class _Tee:
    """What the tees share: the collector and recording the exchange once (when the body
    ends, when the response is closed, or at the end of the run for a response the agent
    never closed)."""

    def __init__(self, cap: RunCapture, raw: RawExchange, t0: float) -> None:
        self._cap = cap
        self._raw = raw
        self._t0 = t0
        self._col = Collector(cap.config.max_body)
        self._complete = False
        self._done = False
        cap.open.add(self)

    def abandon(self) -> None:
        """Record the exchange as it stands (the run ended with the response open)."""
        self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._cap.open.discard(self)
        raw = self._raw
        raw.elapsed = time.perf_counter() - self._t0
        raw.complete = self._complete
        raw.body = self._col if (self._complete or self._col.size) else None
        self._cap.finish(raw)


def _tees(mod: Any) -> tuple[type[Any], type[Any]]:
    """Tee stream classes for an httpx-like module (httpx, or the httpx2 fork that recent
    openai SDKs use): the client asserts the stream is the module's own byte stream type."""

    class SyncTee(_Tee, mod.SyncByteStream):
        def __init__(self, inner: Any, cap: RunCapture, raw: RawExchange, t0: float) -> None:
            _Tee.__init__(self, cap, raw, t0)
            self._inner = inner

        def __iter__(self) -> Iterator[bytes]:
            add = self._col.add
            for chunk in self._inner:
                add(chunk)
                yield chunk
            self._complete = True

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._finish()

    class AsyncTee(_Tee, mod.AsyncByteStream):
        def __init__(self, inner: Any, cap: RunCapture, raw: RawExchange, t0: float) -> None:
            _Tee.__init__(self, cap, raw, t0)
            self._inner = inner

        async def __aiter__(self) -> AsyncIterator[bytes]:
            add = self._col.add
            async for chunk in self._inner:
                add(chunk)
                yield chunk
            self._complete = True

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._finish()

    return SyncTee, AsyncTee


def _failed(cap: RunCapture, raw: RawExchange, exc: BaseException, t0: float) -> None:
    raw.error = f"{type(exc).__name__}: {exc}"
    raw.elapsed = time.perf_counter() - t0
    cap.finish(raw)


def _patch_httpx(mod: Any) -> None:
    """Patch one httpx-like module's transports."""
    library = mod.__name__
    sync_tee, async_tee = _tees(mod)
    original = mod.HTTPTransport.handle_request
    original_async = mod.AsyncHTTPTransport.handle_async_request

    def start(cap: RunCapture, request: Any) -> RawExchange:
        try:
            body: bytes | None = request.content
            streamed = False
        except mod.RequestNotRead:  # a generator / file upload: sent as it is read
            body, streamed = None, True
        return cap.start(library, request.method, str(request.url),
                         list(request.headers.multi_items()), body, streamed=streamed)

    def replayed(cap: RunCapture, raw: RawExchange) -> Any:
        assert cap.world is not None
        status, headers, body = cap.world.answer(raw)
        return mod.Response(status, headers=headers, stream=mod.ByteStream(body))

    @functools.wraps(original)
    def handle_request(self: Any, request: Any) -> Any:
        cap = _current.get()
        if cap is None:
            return original(self, request)
        raw = start(cap, request)
        if cap.world is not None:
            return replayed(cap, raw)
        t0 = time.perf_counter()
        try:
            response = original(self, request)
        except BaseException as exc:
            _failed(cap, raw, exc, t0)
            raise
        raw.status = response.status_code
        raw.response_headers = list(response.headers.multi_items())
        response.stream = sync_tee(response.stream, cap, raw, t0)
        return response

    @functools.wraps(original_async)
    async def handle_async_request(self: Any, request: Any) -> Any:
        cap = _current.get()
        if cap is None:
            return await original_async(self, request)
        raw = start(cap, request)
        if cap.world is not None:
            return replayed(cap, raw)
        t0 = time.perf_counter()
        try:
            response = await original_async(self, request)
        except BaseException as exc:
            _failed(cap, raw, exc, t0)
            raise
        raw.status = response.status_code
        raw.response_headers = list(response.headers.multi_items())
        response.stream = async_tee(response.stream, cap, raw, t0)
        return response

    mod.HTTPTransport.handle_request = handle_request
    mod.AsyncHTTPTransport.handle_async_request = handle_async_request


# -- requests -----------------------------------------------------------------------------


class _RawTee(_Tee):
    """Stands in for ``response.raw`` (a urllib3 response): requests reads the body
    through ``stream()``; everything else is the original's."""

    def __init__(self, inner: Any, cap: RunCapture, raw: RawExchange, t0: float) -> None:
        super().__init__(cap, raw, t0)
        self._inner = inner

    def stream(self, amt: int | None = 2**16, decode_content: bool | None = None
               ) -> Iterator[bytes]:
        self._raw.decoded = bool(decode_content)
        add = self._col.add
        for chunk in self._inner.stream(amt, decode_content=decode_content):
            add(chunk)
            yield chunk
        self._complete = True
        self._finish()

    def read(self, amt: int | None = None, decode_content: bool | None = None,
             **kwargs: Any) -> bytes:
        self._raw.decoded = bool(decode_content)
        data: bytes = self._inner.read(amt, decode_content=decode_content, **kwargs)
        if data:
            self._col.add(data)
        if amt is None or not data:
            self._complete = True
            self._finish()
        return data

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._finish()

    def release_conn(self) -> None:
        try:
            self._inner.release_conn()
        finally:
            self._finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _requests_body(body: Any) -> tuple[bytes | None, bool]:
    if body is None:
        return None, False
    if isinstance(body, bytes):
        return body, False
    if isinstance(body, str):
        return body.encode(), False
    return None, True  # a file or generator: streamed


def _patch_requests() -> None:
    try:
        import requests.adapters
    except ImportError:  # requests is optional
        return
    from io import BytesIO

    from urllib3 import HTTPHeaderDict, HTTPResponse

    adapter = requests.adapters.HTTPAdapter
    original: Callable[..., Any] = adapter.send

    @functools.wraps(original)
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        cap = _current.get()
        if cap is None:
            return original(self, request, *args, **kwargs)
        body, streamed = _requests_body(request.body)
        raw = cap.start("requests", request.method or "GET", request.url or "",
                        list(request.headers.items()), body, streamed=streamed)
        if cap.world is not None:
            status, headers, data = cap.world.answer(raw)
            header_dict = HTTPHeaderDict()
            for k, v in headers:
                header_dict.add(k, v)
            resp = HTTPResponse(body=BytesIO(data), headers=header_dict, status=status,
                                preload_content=False, decode_content=False)
            return self.build_response(request, resp)
        t0 = time.perf_counter()
        try:
            response = original(self, request, *args, **kwargs)
        except BaseException as exc:
            _failed(cap, raw, exc, t0)
            raise
        raw.status = response.status_code
        raw.response_headers = list(response.headers.items())
        response.raw = _RawTee(response.raw, cap, raw, t0)
        return response

    adapter.send = send  # type: ignore[method-assign]
