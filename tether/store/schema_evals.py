"""Evaluation's tables (issue 6): datasets, label observations, experiments.

Defined on the one :data:`tether.store.schema.metadata`; ``schema.py`` imports this module
so the declared schema (and the migration test) always sees every table.
"""

from __future__ import annotations

from tether.store.schema import Id, Json, Time, metadata  # noqa: F401
