"""The production bar and triage (issue 9).

The manager sets a bar per agent (:func:`set_bar`); :func:`train` fits a LightGBM triage
model on reviewed runs and picks, with MAPIE's learn-then-test, the routing threshold whose
automated share meets the bar; the executor's ``triage`` step holds the runs below it for
review, and :func:`release_held` emits their triggers once a reviewer confirms or corrects.
"""

from __future__ import annotations

from tether.triage.bars import Bar, audit_entries, bar_history, get_bar, set_bar
from tether.triage.errors import MissingExtra, TriageError

__all__ = [
    "Bar",
    "MissingExtra",
    "TriageError",
    "audit_entries",
    "bar_history",
    "get_bar",
    "set_bar",
]
