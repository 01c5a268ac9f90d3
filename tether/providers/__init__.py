"""Orchestration providers: the same agents on the local worker, Celery or Temporal.

``provider = "celery"`` (or ``TETHER_PROVIDER=celery``) in the settings picks one;
:func:`get_provider` builds it, and names the extra to install when its engine's client
library is missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tether.errors import ConfigError
from tether.providers.base import Dispatcher, Provider
from tether.providers.local import LocalProvider

if TYPE_CHECKING:
    from tether.project import Project

_PROVIDERS = {
    "local": ("tether.providers.local", "LocalProvider", None),
    "celery": ("tether.providers.celery", "CeleryProvider", "celery"),
    "temporal": ("tether.providers.temporal", "TemporalProvider", "temporal"),
}


def get_provider(project: Project, name: str | None = None) -> Provider:
    """The provider ``name`` (default: the project's ``provider`` setting) for a project.

    Raises:
        ConfigError: unknown name, or its engine's library is not installed (the message
            names the extra, e.g. ``pip install 'tether[celery]'``).
    """
    chosen = name or project.settings.provider
    try:
        module_name, class_name, extra = _PROVIDERS[chosen]
    except KeyError:
        raise ConfigError(
            f"unknown provider {chosen!r}; choose one of {', '.join(_PROVIDERS)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if extra is None or (exc.name or "").startswith("tether"):
            raise
        raise ConfigError(
            f"the {chosen} provider needs {exc.name!r}: pip install 'tether[{extra}]'"
        ) from exc
    cls: type[Provider] = getattr(module, class_name)
    return cls(project)


__all__ = ["Dispatcher", "LocalProvider", "Provider", "get_provider"]
