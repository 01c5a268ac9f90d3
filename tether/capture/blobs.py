"""Content-addressed body storage: a body is stored once under its SHA-256.

The default is a folder (``blobs/`` next to the SQLite file); any fsspec URL
(``s3://bucket/prefix``, ``gcs://…``, ``memory://…``) works with the ``blobs`` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tether.errors import ConfigError, NotFound

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
"""The hash of an empty body, which is never stored (``body`` returns ``b""`` for it)."""


class BlobStore(Protocol):
    """Where bodies live, by SHA-256 (hex)."""

    location: str

    def put(self, sha: str, data: bytes | Sequence[bytes]) -> bool:
        """Store ``data`` (bytes, or chunks to concatenate) under ``sha`` unless present;
        True if it was written now."""

    def get(self, sha: str) -> bytes:
        """The body stored under ``sha`` (:class:`tether.NotFound` if absent)."""

    def exists(self, sha: str) -> bool:
        """Whether a body is stored under ``sha``."""

    def delete(self, sha: str) -> bool:
        """Remove the body stored under ``sha``; True if there was one."""


def _rel(sha: str) -> str:
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise NotFound(f"{sha!r} is not a SHA-256 body hash (64 lower-case hex digits)")
    return f"{sha[:2]}/{sha[2:]}"


class LocalBlobs:
    """Bodies in a folder: ``<root>/ab/cdef…``; written atomically (temp file + rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._dirs: set[str] = set()

    def _path(self, sha: str) -> Path:
        return self.root / _rel(sha)

    def put(self, sha: str, data: bytes | Sequence[bytes]) -> bool:
        # Plain os.path on the writer's hot loop: pathlib costs more than the write.
        folder = os.path.join(self.location, sha[:2])
        path = os.path.join(folder, sha[2:])
        if os.path.exists(path):
            return False
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)
        tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as fh:
                if isinstance(data, bytes):
                    fh.write(data)
                else:
                    fh.writelines(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return True

    def get(self, sha: str) -> bytes:
        if sha == EMPTY_SHA256:
            return b""
        try:
            return self._path(sha).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no body {sha[:12]}… in {self.location}") from None

    def exists(self, sha: str) -> bool:
        return sha == EMPTY_SHA256 or self._path(sha).exists()

    def delete(self, sha: str) -> bool:
        try:
            self._path(sha).unlink()
            return True
        except FileNotFoundError:
            return False


class FsspecBlobs:
    """Bodies in any fsspec file system (S3, GCS, Azure, memory, …)."""

    def __init__(self, url: str) -> None:
        try:
            from fsspec.core import url_to_fs
        except ImportError as exc:
            raise ConfigError(
                f"capture_blobs = {url!r} needs fsspec: pip install 'tether[blobs]' "
                "(plus the file system's package, e.g. s3fs for s3://)"
            ) from exc
        self.location = url
        fs: Any
        fs, root = url_to_fs(url)
        self._fs = fs
        self._root = root.rstrip("/")

    def _path(self, sha: str) -> str:
        return f"{self._root}/{_rel(sha)}"

    def put(self, sha: str, data: bytes | Sequence[bytes]) -> bool:
        path = self._path(sha)
        if self._fs.exists(path):
            return False
        self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self._fs.pipe_file(path, data if isinstance(data, bytes) else b"".join(data))
        return True

    def get(self, sha: str) -> bytes:
        if sha == EMPTY_SHA256:
            return b""
        try:
            return bytes(self._fs.cat_file(self._path(sha)))
        except FileNotFoundError:
            raise NotFound(f"no body {sha[:12]}… in {self.location}") from None

    def exists(self, sha: str) -> bool:
        return sha == EMPTY_SHA256 or bool(self._fs.exists(self._path(sha)))

    def delete(self, sha: str) -> bool:
        path = self._path(sha)
        if not self._fs.exists(path):
            return False
        self._fs.rm_file(path)
        return True


def open_blobs(location: str) -> BlobStore:
    """The blob store at a folder path or fsspec URL."""
    if "://" in location and not location.startswith("file://"):
        return FsspecBlobs(location)
    return LocalBlobs(location.removeprefix("file://"))
