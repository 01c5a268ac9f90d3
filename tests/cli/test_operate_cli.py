"""Operator commands from the shell: retry with a note, cancel, verify after tampering."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from tests.process.helpers import env_for, tether

AGENTS = textwrap.dedent(
    """
    import tether

    @tether.agent
    def assess(ctx):
        with ctx.step("look up policy", input={"case": ctx.key}) as step:
            step.output = {"note_seen": ctx.note}
        if ctx.note is None:
            raise tether.Terminal("policy number not found")
        return {"used_note": ctx.note}
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "assess.py").write_text(AGENTS)
    tether(tmp_path, "submit", "assess", "c1")
    tether(tmp_path, "worker", "--until-idle", "--quiet")
    return tmp_path


def test_retry_with_a_note_reaches_the_agent_and_is_audited(project: Path) -> None:
    env = env_for(project, TETHER_ACTOR="ops.kim")
    out = json.loads(
        tether(project, "retry", "assess/c1", "--note", "policy is P-77", "--json", env=env).stdout
    )
    assert (out["action"], out["actor"], out["note"]) == ("retry", "ops.kim", "policy is P-77")
    tether(project, "worker", "--until-idle", "--quiet")
    shown = json.loads(tether(project, "show", "assess/c1", "--json").stdout)
    assert shown["status"] == "succeeded"
    assert shown["runs"][-1]["output"] == {"used_note": "policy is P-77"}
    assert shown["runs"][-1]["reason"] == "operator"
    assert [(a["action"], a["actor"]) for a in shown["actions"]] == [("retry", "ops.kim")]
    human = tether(project, "show", "assess/c1").stdout
    assert "retry by ops.kim" in human and "policy is P-77" in human

    again = tether(project, "retry", "assess/c1", check=False)
    assert again.returncode == 1 and "applies to failed or cancelled tasks" in again.stderr


def test_cancel_then_retry(project: Path) -> None:
    out = tether(project, "cancel", "assess/c1", "--note", "withdrawn", "--by", "lead").stdout
    assert "cancelled assess/c1 (by lead)" in out
    listed = json.loads(tether(project, "tasks", "--status", "cancelled", "--json").stdout)
    assert [t["ref"] for t in listed] == ["assess/c1"]


def test_verify_passes_then_catches_an_edited_step(project: Path) -> None:
    ok = json.loads(tether(project, "verify", "--json").stdout)
    assert ok["ok"] is True and ok["entries"] == 2  # the step and the run outcome
    db = sqlite3.connect(project / ".tether" / "tether.db")
    with db:
        db.execute("UPDATE steps SET output = '{\"note_seen\": \"forged\"}'")
    db.close()
    proc = tether(project, "verify", check=False)
    assert proc.returncode == 1
    assert "assess/c1" in proc.stdout and "changed" in proc.stdout
    report = json.loads(tether(project, "verify", "--json", check=False).stdout)
    assert report["ok"] is False and report["problems"][0]["ref"].startswith("step:")
