"""The ``tether`` command line."""

from tether.capture import cli as capture  # registers replay, drift and capture …
from tether.cli import (
    operate,  # registers retry, cancel and verify on `app`
    provenance,  # registers why, why-not and graph on `app`
    review,  # registers `review` and `examples` on `app`
    temporal,  # registers `temporal dev` on `app`
)
from tether.cli.app import app, main
from tether.triage import cli as triage  # registers `bar` and `triage` on `app`

__all__ = ["app", "capture", "main", "operate", "provenance", "review", "temporal", "triage"]
