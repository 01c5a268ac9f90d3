"""The production bar's errors: one-line messages that say what, where and how to fix."""

from __future__ import annotations

from tether.errors import TetherError


class TriageError(TetherError):
    """A bar, a triage model or a held run cannot be used as asked."""


class MissingExtra(TriageError):
    """An optional dependency of the production bar is not installed."""


def require(module: str) -> None:
    """Raise :class:`MissingExtra` naming the extra when ``module`` cannot be imported."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"the production bar needs {module!r}, which is not installed; "
            "install it with `pip install 'tether[triage]'`"
        ) from exc
