"""The examples the docs show are real files, run here against a real worker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.process.helpers import env_for, tether

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "at_most_once.py"


def test_the_doc_shows_the_example_file_verbatim() -> None:
    assert EXAMPLE.read_text() in (ROOT / "docs" / "reconciliation.md").read_text()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "agents").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "agents" / "at_most_once.py")
    return tmp_path


def _mailbox(project: Path) -> list[dict[str, str]]:
    path = project / "mailbox.json"
    return json.loads(path.read_text()) if path.exists() else []


def test_at_most_once_email_across_new_input(project: Path) -> None:
    env = env_for(project, MAILBOX=str(project / "mailbox.json"))
    tether(project, "submit", "ask_broker", "case-7", env=env)
    tether(project, "worker", "--until-idle", "--quiet", env=env)
    shown = json.loads(tether(project, "show", "ask_broker/case-7", "--json", env=env).stdout)
    assert shown["status"] == "waiting"
    assert shown["runs"][0]["waiting_for"] == "broker's reply"
    assert len(_mailbox(project)) == 1

    # Weeks later the broker replies: a new run, and the email is not sent again.
    tether(project, "submit", "ask_broker", "case-7", "--input",
           '{"from": "broker", "premium": 640}', env=env)
    tether(project, "worker", "--until-idle", "--quiet", env=env)
    shown = json.loads(tether(project, "show", "ask_broker/case-7", "--json", env=env).stdout)
    assert shown["status"] == "succeeded"
    assert shown["runs"][-1]["output"] == {"message_id": "msg-1", "premium": 640}
    assert [s["status"] for s in shown["runs"][-1]["steps"]] == ["skipped"]
    assert len(_mailbox(project)) == 1


def test_a_send_interrupted_by_a_crash_is_reconciled_from_the_mailbox(project: Path) -> None:
    mailbox = project / "mailbox.json"
    env = env_for(project, MAILBOX=str(mailbox))
    script = f"""
import sys
sys.path.insert(0, {str(project / "agents")!r})
import at_most_once, tether
from tether.store import StepWrite
p = tether.Project.load({str(project)!r})
p.submit("ask_broker", "case-9")
[claim] = p.store.claim("doomed", limit=1, lease_seconds=0.2)
key = "email-broker:case-9"
p.store.insert_steps(claim.task_id, claim.run_id, [StepWrite(seq=1, name=key, key=key,
    input=None, output=None, status="running", error=None, started_at=0.0, finished_at=None)])
at_most_once.send_email("case-9", "Please quote case case-9")  # went out, then the crash
"""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", script], cwd=project, env=env, check=True)
    tether(project, "worker", "--until-idle", "--quiet", "--lease", "0.2", env=env)
    shown = json.loads(tether(project, "show", "ask_broker/case-9", "--json", env=env).stdout)
    first, second = shown["runs"]
    assert "worker lost" in first["failure_reason"]
    assert second["output"] == {"message_id": "msg-1"}
    assert len(_mailbox(project)) == 1  # reconciled, not re-sent
