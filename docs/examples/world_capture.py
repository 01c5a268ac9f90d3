"""A quote agent whose world moves: it reads a price and a risk loading over HTTP."""

import os

import httpx

import tether


@tether.agent
def quote(ctx: tether.Context) -> dict[str, float]:
    api = os.environ["PRICING_API"]
    token = os.environ.get("PRICING_TOKEN", "dev-token-123456")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api, headers=headers) as client:
        with ctx.step("read price", input={"case": ctx.key}):
            price = client.get("/price", params={"case": ctx.key}).json()
        with ctx.step("read risk"):
            risk = client.post("/risk", json={"case": ctx.key, "amount": price["amount"]})
    return {"premium": round(price["amount"] * (1 + risk.json()["loading"]), 2)}
