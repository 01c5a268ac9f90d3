"""The report and rollout review through a real worker: the bar re-checked on reviews of
automated runs, a warning when it slips, the CLI's JSON and HTML."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from typer.testing import CliRunner

from tether import Project, WorkerStats
from tether.cli import app
from tether.review.flow import sampled
from tether.store.schema import runs, tasks
from tether.store.schema_review import review_queue, reviews
from tether.triage import set_bar
from tether.triage.report import report
from tether.triage.synthetic import seed_reviewed
from tether.triage.train import train

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

AGENT_SRC = """
import tether

@tether.agent
def quote(ctx):
    with ctx.step("price"):
        pass
    return dict(ctx.input)
"""
EASY = {"confidence": 0.99, "kind": "auto", "amount": 300}


@pytest.fixture
def project(make_project: MakeProject, tmp_path: Path, store_url: str) -> Project:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "quote.py").write_text(AGENT_SRC)
    p = make_project(database_url=store_url)
    seed_reviewed(p.store, "quote", 4000, seed=3)
    return p


def _review_all_automated(project: Project, verdict: str) -> int:
    """Reviews (as a reviewer would) of every automated run after training."""
    with project.store.engine.connect() as conn:
        found = conn.execute(
            select(runs.c.id, runs.c.task_id).join(tasks, tasks.c.id == runs.c.task_id)
            .where(tasks.c.key.like("live-%"))
        ).all()
    with project.store.engine.begin() as conn:
        conn.execute(insert(reviews), [
            {"run_id": r.id, "task_id": r.task_id, "agent": "quote", "verdict": verdict,
             "reason": None if verdict == "correct" else "wrong", "reviewer": "ana",
             "created_at": time.time()} for r in found
        ])
    return len(found)


@pytest.mark.parametrize(("verdict", "slipped"), [("correct", False), ("incorrect", True)])
def test_report_rechecks_the_bar_on_reviewed_automated_runs(
    project: Project, run_idle: RunIdle, verdict: str, slipped: bool
) -> None:
    set_bar(project.store, "quote", target=0.9, confidence=0.9, by="maria", rollout_rate=1.0)
    train(project.store, project.graph, "quote")
    for i in range(40):
        project.submit("quote", f"live-{i}", {**EASY, "amount": i})
    run_idle(project)
    # rollout review at rate 1.0: every automated run was queued, none held
    with project.store.engine.connect() as conn:
        queued = conn.execute(select(review_queue.c.source, review_queue.c.held)).all()
    assert sorted(set(queued)) == [("rollout", 0)] and len(queued) == 40
    assert _review_all_automated(project, verdict) == 40

    data = report(project.store, "quote")
    assert data["recent"]["reviewed"] == 40
    assert data["recent"]["slipped"] is slipped
    assert data["bar_met"] is (not slipped)
    if slipped:
        assert any("bar has slipped" in n for n in data["notes"])
        assert data["recent"]["error_lower_bound"] > 0.1
    else:
        assert data["recent"]["precision"] == 1.0 and data["notes"] == []


def test_cli_train_and_report_json_and_html(
    project: Project, tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_DATABASE_URL", store_url)
    runner = CliRunner()
    base = ["-C", str(tmp_path)]
    no_bar = runner.invoke(app, [*base, "triage", "train", "quote"])
    assert "no production bar" in str(no_bar.exception)
    out = runner.invoke(app, [*base, "bar", "set", "quote", "--precision", "0.9",
                              "--confidence", "0.9", "--by", "maria"])
    assert out.exit_code == 0, out.output
    trained = runner.invoke(app, [*base, "triage", "train", "quote", "--json"])
    assert trained.exit_code == 0, trained.output
    model: dict[str, Any] = json.loads(trained.output)
    assert model["threshold"] is not None and model["trained_on"]["rows"] == 4000
    page = tmp_path / "report.html"
    rep = runner.invoke(app, [*base, "triage", "report", "quote", "--json", "--html", str(page)])
    assert rep.exit_code == 0, rep.output
    data = json.loads(rep.output)
    assert data["chosen"]["threshold"] == model["threshold"]
    assert any(c["meets_bar"] for c in data["curve"])
    text = page.read_text()
    assert "<svg" in text and "automation rate" in text and "Bar met" in text
    # a stricter bar after training: the report says to retrain
    runner.invoke(app, [*base, "bar", "set", "quote", "--precision", "0.95", "--by", "li"])
    later = json.loads(runner.invoke(app, [*base, "triage", "report", "quote", "--json"]).output)
    assert any("retrain" in n for n in later["notes"])


def test_rollout_sampling_rate_is_respected_and_reproducible() -> None:
    picked = [sampled(i, 0.1) for i in range(20000)]
    assert 0.09 < sum(picked) / len(picked) < 0.11
    assert picked == [sampled(i, 0.1) for i in range(20000)]
    assert not any(sampled(i, 0.0) for i in range(1000))
    assert all(sampled(i, 1.0) for i in range(1000))
