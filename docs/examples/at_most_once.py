"""An email to a broker that must go out at most once, across retries and worker crashes.

Drop this file into a project's agents/ folder. The "world" here is a mailbox file, so the
example runs anywhere; in production `send_email` and `sent_to` call the mail system.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import tether

MAILBOX = Path(os.environ.get("MAILBOX", "mailbox.json"))


def sent_to(case: str) -> dict[str, Any] | None:
    """What the world shows: the message sent for this case, if any."""
    messages = json.loads(MAILBOX.read_text()) if MAILBOX.exists() else []
    return next((m for m in messages if m["case"] == case), None)


def send_email(case: str, body: str) -> dict[str, Any]:
    """The side effect we must not repeat."""
    messages = json.loads(MAILBOX.read_text()) if MAILBOX.exists() else []
    message = {"case": case, "body": body, "message_id": f"msg-{len(messages) + 1}"}
    MAILBOX.write_text(json.dumps([*messages, message]))
    return message


@tether.agent(emits="quote.requested", max_attempts=5)
def ask_broker(ctx: tether.Context) -> Any:
    case = ctx.key
    # Sent at most once per task: a retry gets the recorded message back. If a worker died
    # inside the send (nobody knows whether it went out), `reconcile` asks the mailbox.
    message = ctx.once(
        f"email-broker:{case}",
        lambda: send_email(case, f"Please quote case {case}"),
        reconcile=lambda: sent_to(case),
    )
    replies = [i.data for i in ctx.inputs if i.data and i.data.get("from") == "broker"]
    if not replies:
        # Our part is done; the task waits (for weeks, perhaps) for the broker's reply.
        return tether.Waiting({"message_id": message["message_id"]}, reason="broker's reply")
    return {"message_id": message["message_id"], "premium": replies[-1]["premium"]}
