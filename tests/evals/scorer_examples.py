"""Custom scorers the tests name by dotted path."""

from __future__ import annotations

from typing import Any

from tether.evals.scorers import Verdict, partial


def amount_verdict(decision: Any, label: Any, case: Any) -> Verdict | tuple[str, str]:
    """Correct on the right class and amount, partial on the class alone."""
    if decision["class"] != label["class"]:
        return ("incorrect", f"class {decision['class']} is not {label['class']}")
    if decision["amount"] == label["amount"]:
        return Verdict.of("correct")
    return partial(f"amount {decision['amount']} is not {label['amount']}", score=0.25)


def broken(decision: Any, label: Any) -> bool:
    raise RuntimeError("boom")
