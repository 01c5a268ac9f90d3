import tether


@tether.agent(
    review_rate=1.0,  # rollout: every run is queued for review while the agent is new
    example_fields=("claim.description",),  # what makes two claims alike
    example_threshold=0.5,  # the bar: calibrate it with `tether examples calibrate`
)
def claims(ctx):
    claim = ctx.input["claim"]
    shown = ctx.examples(k=3) if claim.get("description") else []
    if shown:  # a reviewer corrected a case like this one: follow the correction
        return shown[0].corrected_output
    return {"decision": "approve"}
