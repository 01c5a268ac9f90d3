"""Capture settings for one store: where bodies go, what is redacted, what a fingerprint
ignores. Read from the project's :class:`tether.config.Settings` (``capture_*``)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from tether.config import Settings

if TYPE_CHECKING:
    from tether.store import Store


@dataclass(frozen=True)
class CaptureConfig:
    """What capture does for one store (see the ``capture_*`` settings)."""

    enabled: bool = True
    blobs: str = ".tether/blobs"
    """A folder or an fsspec URL."""
    max_body: int = 10 * 1024 * 1024
    redact_headers: tuple[str, ...] = ()
    redact_fields: tuple[str, ...] = ()
    ignore_query: tuple[str, ...] = ()
    ignore_fields: tuple[str, ...] = ()
    fingerprint_headers: tuple[str, ...] = ("accept",)

    @classmethod
    def from_settings(cls, settings: Settings) -> CaptureConfig:
        """The capture configuration a project's settings describe."""
        return cls(
            enabled=settings.capture,
            blobs=_blob_location(settings.capture_blobs, settings.url, settings.project_dir),
            max_body=settings.capture_max_body,
            redact_headers=settings.capture_redact_headers,
            redact_fields=settings.capture_redact_fields,
            ignore_query=settings.capture_ignore_query,
            ignore_fields=settings.capture_ignore_fields,
            fingerprint_headers=settings.capture_fingerprint_headers,
        )

    @classmethod
    def for_url(cls, url: str) -> CaptureConfig:
        """Defaults for a store opened by URL alone (no project settings)."""
        return cls(blobs=_blob_location(None, url, Path.cwd()))


def _blob_location(configured: str | None, store_url: str, project_dir: Path) -> str:
    if configured:
        if "://" in configured and not configured.startswith("file://"):
            return configured
        path = Path(configured.removeprefix("file://")).expanduser()
        return str(path if path.is_absolute() else project_dir / path)
    # Next to the SQLite file (so ./.tether/blobs by default); else under the project.
    if store_url.startswith("sqlite"):
        database = make_url(store_url).database
        if database and database != ":memory:":
            return str(Path(database).expanduser().resolve().parent / "blobs")
    return str(project_dir / ".tether" / "blobs")


_configs: weakref.WeakKeyDictionary[Store, CaptureConfig] = weakref.WeakKeyDictionary()


def attach(store: Store, settings: Settings | CaptureConfig) -> None:
    """Make ``settings`` the capture configuration of runs executed against ``store``.

    :class:`tether.Project` does this when it opens its store; a store opened by URL alone
    gets :meth:`CaptureConfig.for_url` defaults.
    """
    config = settings if isinstance(settings, CaptureConfig) else CaptureConfig.from_settings(
        settings
    )
    _configs[store] = config
    from tether.capture.recorder import forget_sink

    forget_sink(store)


def config_for(store: Store) -> CaptureConfig:
    """The capture configuration of ``store`` (attached, else defaults for its URL)."""
    config = _configs.get(store)
    if config is None:
        config = CaptureConfig.for_url(store.url)
        _configs[store] = config
    return config
