"""Two versions of a fraud check, for the evaluation guide (docs/evaluation.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import tether


def _flag(output: dict[str, Any]) -> str | None:
    return "fraud.flagged" if output["decision"] == "fraud" else None


@tether.agent(emits=_flag, may_emit=["fraud.flagged"])
def fraud_v1(ctx: tether.Context) -> dict[str, Any]:
    """Flags every payment of 1000 or more."""
    amount = ctx.input["amount"]
    with ctx.step("apply threshold", input={"amount": amount}) as step:
        step.output = amount >= 1000
    return {"decision": "fraud" if step.output else "legit", "cost": 0.002}


@tether.agent(emits=_flag, may_emit=["fraud.flagged"])
async def fraud_v2(ctx: tether.Context) -> dict[str, Any]:
    """Also flags high-risk countries, and (a planted bug) misses very large payments."""
    await asyncio.sleep(0.01)  # stands in for a model call
    amount, country = ctx.input["amount"], ctx.input["country"]
    flagged = (1000 <= amount < 5000) or country == "XX"
    return {"decision": "fraud" if flagged else "legit", "cost": 0.004}


@tether.agent(subscribes="fraud.flagged")
def block_card(ctx: tether.Context) -> dict[str, Any]:
    """Production only: an experiment's decisions never reach this agent."""
    return {"blocked": ctx.key}
