"""Scorers: how a decision is compared with a label.

A scorer is called as ``scorer(decision, label, case)`` and returns a :class:`Verdict`:
``correct``, ``incorrect`` or ``partial`` (the vocabulary of human review) with a score in
[0, 1] and an optional reason. Custom scorers may return any of: a ``bool``, a number in
[0, 1], a verdict word, a ``(verdict, reason)`` pair, a ``{"verdict", "reason",
"score"}`` mapping or a :class:`Verdict`. A scorer that raises makes the case an *error*,
reported apart from the scores.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tether.evals.loading import DatasetError

VERDICTS = ("correct", "incorrect", "partial")


class ScorerError(DatasetError):
    """A scorer cannot be found, or returned something that is not a score."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A scored case: ``correct`` (1), ``incorrect`` (0) or ``partial`` (in between)."""

    verdict: str
    score: float
    reason: str | None = None

    @staticmethod
    def of(verdict: str, reason: str | None = None, score: float | None = None) -> Verdict:
        """A verdict by word, with the default score (correct 1, partial 0.5, incorrect 0)."""
        if verdict not in VERDICTS:
            raise ScorerError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        default = {"correct": 1.0, "incorrect": 0.0, "partial": 0.5}[verdict]
        return Verdict(verdict, default if score is None else float(score), reason)


def correct(reason: str | None = None) -> Verdict:
    """A correct verdict."""
    return Verdict("correct", 1.0, reason)


def incorrect(reason: str | None = None) -> Verdict:
    """An incorrect verdict."""
    return Verdict("incorrect", 0.0, reason)


def partial(reason: str | None = None, score: float = 0.5) -> Verdict:
    """A partly correct verdict (score strictly between 0 and 1)."""
    return Verdict("partial", score, reason)


def normalize(value: Any) -> Verdict:
    """Any value a scorer may return, as a :class:`Verdict`."""
    if isinstance(value, Verdict):
        return value
    if isinstance(value, bool):
        return correct() if value else incorrect()
    if isinstance(value, int | float):
        x = float(value)
        if not (0.0 <= x <= 1.0) or math.isnan(x):
            raise ScorerError(f"a scorer returned {value!r}; scores lie in [0, 1]")
        return Verdict("correct" if x == 1 else "incorrect" if x == 0 else "partial", x)
    if isinstance(value, str):
        return Verdict.of(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return Verdict.of(value[0], value[1])
    if isinstance(value, Mapping) and "verdict" in value:
        return Verdict.of(str(value["verdict"]), value.get("reason"), value.get("score"))
    raise ScorerError(
        f"a scorer returned {value!r}; return a bool, a score in [0, 1], a verdict word, "
        "(verdict, reason) or tether.evals.Verdict"
    )


Scorer = Callable[[Any, Any, Any], Verdict]
"""``(decision, label, case) -> Verdict``."""


def exact(decision: Any, label: Any, case: Any = None) -> Verdict:
    """Correct when the decision equals the label (``True`` does not equal ``1`` here)."""
    if decision == label and isinstance(decision, bool) == isinstance(label, bool):
        return correct()
    return incorrect(f"decided {decision!r}, label {label!r}")


setattr(exact, "tether_pure", True)  # noqa: B010 - memoizable: depends on its arguments only


def numeric(tolerance: float, *, relative: bool = False) -> Scorer:
    """Correct when ``|decision - label| <= tolerance`` (times ``|label|`` if relative)."""

    def score(decision: Any, label: Any, case: Any = None) -> Verdict:
        try:
            d, lab = float(decision), float(label)
        except (TypeError, ValueError):
            return incorrect(f"decision {decision!r} or label {label!r} is not a number")
        limit = tolerance * abs(lab) if relative else tolerance
        if abs(d - lab) <= limit:
            return correct()
        return incorrect(f"decided {d:g}, label {lab:g} (off by {abs(d - lab):g} > {limit:g})")

    setattr(score, "tether_pure", True)  # noqa: B010 - a function attribute mypy cannot see
    return score


def custom(fn: Callable[..., Any]) -> Scorer:
    """Wrap a function ``(decision, label[, case])`` returning anything :func:`normalize`
    accepts."""
    try:
        takes_case = len(inspect.signature(fn).parameters) >= 3
    except (TypeError, ValueError):
        takes_case = True

    def score(decision: Any, label: Any, case: Any = None) -> Verdict:
        out = fn(decision, label, case) if takes_case else fn(decision, label)
        return normalize(out)

    return score


def resolve(spec: str) -> Scorer:
    """A scorer from its name: ``exact``, ``numeric:TOL`` (absolute), ``numeric:TOL%``
    (relative), or a dotted path ``package.module:function`` (or ``package.module.function``)
    to a custom scorer.

    Raises:
        ScorerError: unknown name or unimportable path.
    """
    spec = spec.strip()
    if spec in ("", "exact"):
        return exact
    if spec.startswith("numeric:"):
        text = spec.split(":", 1)[1]
        relative = text.endswith("%")
        try:
            tol = float(text.rstrip("%"))
        except ValueError:
            raise ScorerError(
                f"scorer {spec!r}: the tolerance must be a number, e.g. numeric:0.01 or numeric:5%"
            ) from None
        return numeric(tol / 100 if relative else tol, relative=relative)
    module, sep, attr = spec.partition(":")
    if not sep:
        module, _, attr = spec.rpartition(".")
    if not module or not attr:
        raise ScorerError(
            f"unknown scorer {spec!r}: use exact, numeric:TOL, numeric:TOL% or "
            "package.module:function"
        )
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ScorerError(f"scorer {spec!r}: cannot import it ({exc})") from None
    if not callable(fn):
        raise ScorerError(f"scorer {spec!r} is not a function")
    return custom(fn)
