"""``tether init``: a project skeleton with one example agent."""

from __future__ import annotations

from pathlib import Path

CONFIG = """\
# Tether project settings. Each can also be set as TETHER_<NAME> (which wins).
# With none of them, Tether keeps its store in ./.tether/tether.db (SQLite).

# database_url = "postgresql://user@127.0.0.1:5432/tether"
# agents_dir = "agents"
# durability = "full"        # or "relaxed": faster; the last commits may be lost on power loss
# concurrency = 4            # runs a local worker executes at once
# lease_seconds = 30         # a run whose worker stops renewing is retried after this
"""

EXAMPLE_AGENT = '''\
"""An example agent. Every module in agents/ is imported by `tether agents` and `tether worker`."""

import tether


@tether.agent(emits="greeting.sent", max_attempts=3)
def greet(ctx: tether.Context) -> dict:
    """Greets the person named in the task's input."""
    name = (ctx.input or {}).get("name", ctx.key)
    with ctx.step("compose greeting", input={"name": name}) as step:
        step.output = {"text": f"Hello, {name}!"}
    return step.output


@tether.agent(subscribes="greeting.sent")
def log_greeting(ctx: tether.Context) -> dict:
    """Runs after `greet` succeeded for the same key: its output arrives as ctx.upstream."""
    text = ctx.upstream["greeting.sent"]["text"]
    with ctx.step("record greeting", input={"text": text}):
        pass
    return {"logged": text}
'''

GITIGNORE = ".tether/\n__pycache__/\n"


def scaffold(target: Path) -> list[Path]:
    """Write the skeleton into ``target``; existing files are left alone. Returns new files."""
    files = {
        target / "tether.toml": CONFIG,
        target / "agents" / "example.py": EXAMPLE_AGENT,
        target / ".gitignore": GITIGNORE,
    }
    written: list[Path] = []
    for path, text in files.items():
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
