"""The ``tether`` command line."""

from tether.cli import (
    operate,  # registers retry, cancel and verify on `app`
    provenance,  # registers why, why-not and graph on `app`
    review,  # registers `review` and `examples` on `app`
    temporal,  # registers `temporal dev` on `app`
)
from tether.cli.app import app, main

__all__ = ["app", "main", "operate", "provenance", "review", "temporal"]
