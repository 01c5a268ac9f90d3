"""The production-bar guide's walkthrough, run through the `tether` command and a real
worker: set the bar, train, held runs wait for review, release, verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.process.helpers import env_for, tether
from tether import Project
from tether.triage.synthetic import seed_reviewed

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "triage_quote.py"
GUIDE = ROOT / "docs" / "production-bar.md"


def test_the_guide_shows_the_example_file_verbatim() -> None:
    assert EXAMPLE.read_text() in GUIDE.read_text()


def test_walkthrough(tmp_path: Path) -> None:
    (tmp_path / "agents").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "agents" / "triage_quote.py")
    env = env_for(tmp_path)
    with Project.load(tmp_path) as project:  # months of reviewed traffic, in seconds
        seed_reviewed(project.store, "quote", 4000, seed=3)
    tether(tmp_path, "bar", "set", "quote", "--precision", "0.9", "--confidence", "0.9",
           "--by", "maria", "--note", "launch bar", env=env)
    shown = json.loads(tether(tmp_path, "bar", "show", "quote", "--json", env=env).stdout)
    assert shown["bar"]["target"] == 0.9 and shown["audit"][0]["actor"] == "maria"
    model = json.loads(tether(tmp_path, "triage", "train", "quote", "--json", env=env).stdout)
    assert model["threshold"] is not None

    easy = json.dumps({"confidence": 0.99, "kind": "auto", "amount": 300})
    hard = json.dumps({"confidence": 0.1, "kind": "life", "amount": 4000})
    tether(tmp_path, "submit", "quote", "case-easy", "--input", easy, env=env)
    tether(tmp_path, "submit", "quote", "case-hard", "--input", hard, env=env)
    tether(tmp_path, "worker", "--until-idle", "--quiet", env=env)

    held = json.loads(tether(tmp_path, "show", "quote/case-hard", "--json", env=env).stdout)
    assert held["status"] == "waiting" and held["runs"][0]["waiting_for"] == "review"
    assert [s["name"] for s in held["runs"][0]["steps"]] == ["price the case", "triage"]
    bound = json.loads(tether(tmp_path, "tasks", "--agent", "bind", "--json", env=env).stdout)
    assert [t["key"] for t in bound] == ["case-easy"]

    queued = json.loads(tether(tmp_path, "review", "list", "--json", env=env).stdout)
    held_run = held["runs"][0]["id"]
    assert [(q["run_id"], q["source"], q["held"]) for q in queued] == [
        (held_run, "triage", True)
    ]
    tether(tmp_path, "review", "record", str(held_run), "--verdict", "correct",
           "--reviewer", "ana", env=env)
    tether(tmp_path, "worker", "--until-idle", "--quiet", env=env)
    bound = json.loads(tether(tmp_path, "tasks", "--agent", "bind", "--json", env=env).stdout)
    assert sorted(t["key"] for t in bound) == ["case-easy", "case-hard"]
    why = tether(tmp_path, "why", "bind/case-hard", env=env).stdout
    assert "review by ana: correct" in why
    tether(tmp_path, "verify", env=env)
    report = tmp_path / "report.html"
    tether(tmp_path, "triage", "report", "quote", "--html", str(report), env=env)
    assert "<svg" in report.read_text()
