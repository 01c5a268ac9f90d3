"""The ``tether`` command line."""

from tether.cli.app import app, main

__all__ = ["app", "main"]
