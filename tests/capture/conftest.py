"""Fixtures of the capture tests: the local API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.capture.world import World, serve


@pytest.fixture
def world() -> Iterator[World]:
    """A local HTTP API whose answers the test sets (see ``tests/capture/world.py``)."""
    with serve() as w:
        yield w
