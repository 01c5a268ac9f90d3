"""A quoting agent under a production bar. Nothing in it knows about triage: the harness
scores each output after the agent returns and holds the doubtful ones for review."""

import tether


def quote_features(ctx, output):
    # What the builder knows predicts mistakes: big amounts and unusual kinds are harder.
    return {"amount_band": "high" if output["amount"] > 2500 else "normal"}


@tether.agent(emits="quoted", features=quote_features)
def quote(ctx):
    with ctx.step("price the case", input=ctx.input) as step:
        step.output = dict(ctx.input)  # a real agent calls its model here
    return step.output


@tether.agent(subscribes="quoted")
def bind(ctx):
    return {"bound": ctx.upstream["quoted"]["amount"]}
