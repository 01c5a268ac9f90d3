"""`tether why`, `tether why-not` and `tether graph`, run as a user runs them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.process.helpers import env_for, tether

AGENTS = textwrap.dedent(
    '''
    """kyc and risk (roots) -> quote (a join) -> notify; kyc fails terminally for c2."""
    import tether

    FAST = tether.RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)


    @tether.agent(emits="kyc.passed", team="compliance", retry=FAST)
    def kyc(ctx):
        with ctx.step("screen sanctions", input={"case": ctx.key}) as step:
            step.output = {"hit": ctx.key == "c2"}
        if ctx.key == "c2":
            raise tether.Terminal("sanctions match")
        return {"verified": True}


    @tether.agent(emits="risk.scored", team="risk", retry=FAST)
    def risk(ctx):
        if ctx.key == "c1" and ctx.attempt == 1:
            raise tether.Retryable("credit bureau unavailable")
        with ctx.step("score") as step:
            step.output = {"score": 7}
        return {"score": 7}


    @tether.agent(subscribes=["kyc.passed", "risk.scored"], emits="quote.ready",
                  team="sales", retry=FAST)
    def quote(ctx):
        with ctx.step("price") as step:
            step.output = {"premium": 100 + ctx.upstream["risk.scored"]["score"]}
        return step.output


    @tether.agent(subscribes="quote.ready", team="sales", retry=FAST)
    def notify(ctx):
        with ctx.step("email broker") as step:
            step.output = "sent"
        return {"sent": True}
    '''
)


def _make(project: Path, env: dict[str, str]) -> Path:
    """c1 goes through (risk after one retry), kyc/c2 fails terminally, risk/c3 is never
    submitted."""
    (project / "agents").mkdir(parents=True)
    (project / "agents" / "cases.py").write_text(AGENTS)
    for agent, key in (("kyc", "c1"), ("risk", "c1"), ("kyc", "c2"), ("risk", "c2"),
                       ("kyc", "c3")):
        tether(project, "submit", agent, key, env=env)
    stats = json.loads(tether(project, "worker", "--until-idle", "--json", env=env).stdout)
    assert (stats["succeeded"], stats["failed"]) == (6, 2)
    return project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return _make(tmp_path, env_for(tmp_path))


def _json(project: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(tether(project, *args, "--json", env=env).stdout)


def _run_ids(project: Path, ref: str, env: dict[str, str] | None = None) -> list[int]:
    return [r["id"] for r in _json(project, "show", ref, env=env)["runs"]]


def test_why_prints_the_causal_chain(project: Path) -> None:
    [notify_run] = _run_ids(project, "notify/c1")
    [quote_run] = _run_ids(project, "quote/c1")
    [kyc_run] = _run_ids(project, "kyc/c1")
    _risk_failed, risk_ok = _run_ids(project, "risk/c1")

    data = _json(project, "why", "notify/c1")

    assert (data["task"], data["depth"]) == ("notify/c1", 2)
    chain = data["chain"]
    assert (chain["task"]["ref"], chain["run"]["id"]) == ("notify/c1", notify_run)
    assert [s["name"] for s in chain["run"]["steps"]] == ["email broker"]
    [quote] = chain["triggered_by"]
    assert (quote["trigger"], quote["upstream_task"], quote["upstream_run_id"]) == (
        "quote.ready", "quote/c1", quote_run,
    )
    assert quote["upstream"]["run"]["output"] == {"premium": 107}
    assert [
        (e["trigger"], e["upstream_task"], e["upstream_run_id"], e["upstream"]["run"]["attempt"])
        for e in quote["upstream"]["triggered_by"]
    ] == [("kyc.passed", "kyc/c1", kyc_run, 1), ("risk.scored", "risk/c1", risk_ok, 2)]

    text = tether(project, "why", "notify/c1").stdout
    assert text.startswith("Why notify/c1: 2 edge(s) deep\n")
    assert f"run {notify_run} · attempt 1 (trigger) · succeeded" in text
    assert "quote.ready fired at " in text and "← quote/c1 (task " in text
    assert f"run {risk_ok} · attempt 2 (retry) · succeeded" in text
    assert "1. screen sanctions ✓" in text and "1. email broker ✓" in text
    assert 'output: {"premium": 107}' in text


def test_why_not_names_the_root_cause(project: Path) -> None:
    [kyc_run] = _run_ids(project, "kyc/c2")
    [risk_run] = _run_ids(project, "risk/c2")

    data = _json(project, "why-not", "notify", "c2")

    assert (data["task"], data["ran"]) == ("notify/c2", False)
    [cause] = data["root_causes"]
    assert (cause["task"], cause["state"], cause["failure_class"], cause["reason"],
            cause["run_id"]) == ("kyc/c2", "failed", "terminal", "sanctions match", kyc_run)
    [quote_ready] = data["explanation"]["triggers"]
    [quote] = quote_ready["upstream"]
    assert (quote_ready["fired"], quote["task"], quote["state"]) == (False, "quote/c2", "pending")
    kyc_check, risk_check = quote["triggers"]
    assert (kyc_check["trigger"], kyc_check["fired"]) == ("kyc.passed", False)
    assert [(e["upstream_ref"], e["upstream_run_id"]) for e in risk_check["edges"]] == [
        ("risk/c2", risk_run)
    ]

    text = tether(project, "why-not", "notify", "c2").stdout
    assert text.startswith("Why not notify/c2?\n")
    assert "✗ quote.ready did not fire for key c2" in text
    assert "✗ kyc.passed did not fire for key c2\n" in text
    assert f"✓ risk.scored fired from risk/c2 (run {risk_run}) at " in text
    assert f"run {kyc_run} · attempt 1 (submitted) · failed · terminal: sanctions match" in text
    assert text.endswith(
        f"Root cause:\n  • kyc/c2 failed terminally: sanctions match (run {kyc_run}, "
        "attempt 1)\n"
    )


def test_why_not_names_an_upstream_never_submitted_and_a_task_that_ran(project: Path) -> None:
    missing = tether(project, "why-not", "quote", "c3").stdout
    assert "Root cause:\n  • risk/c3 was never submitted (risk is a root agent: " in missing
    assert "✓ kyc.passed fired" in missing

    [quote_run] = _run_ids(project, "quote/c1")
    ran = _json(project, "why-not", "quote", "c1")
    assert (ran["ran"], ran["root_causes"]) == (True, [])
    assert f"quote/c1 ran: run {quote_run} succeeded" in ran["summary"]
    assert "tether why quote/c1" in tether(project, "why-not", "quote", "c1").stdout


def test_graph_prints_the_agent_graph_in_every_format(project: Path) -> None:
    text = tether(project, "graph").stdout
    assert text.startswith("Agent graph: 4 agents, 3 trigger edges\n")
    assert "kyc  (team compliance)\n  subscribes: - (a root: work is submitted to it)\n" in text
    assert "  emits:      kyc.passed → quote\n" in text

    data = _json(project, "graph")
    assert data == json.loads(tether(project, "graph", "--format", "json").stdout)
    assert sorted((e["from"], e["trigger"], e["to"]) for e in data["edges"]) == [
        ("kyc", "kyc.passed", "quote"), ("quote", "quote.ready", "notify"),
        ("risk", "risk.scored", "quote"),
    ]
    assert {n["name"]: n["team"] for n in data["nodes"]} == {
        "kyc": "compliance", "risk": "risk", "quote": "sales", "notify": "sales",
    }
    mermaid = tether(project, "graph", "--format", "mermaid").stdout
    assert mermaid.startswith("flowchart LR\n") and mermaid.count("-->|") == 3
    dot = tether(project, "graph", "-f", "dot").stdout
    assert dot.startswith("digraph tether {") and 'label="compliance";' in dot

    bad = tether(project, "graph", "--format", "svg", check=False)
    assert bad.returncode == 2 and "svg" in bad.stderr


def test_graph_of_one_task(project: Path) -> None:
    data = _json(project, "graph", "--task", "quote/c1")
    assert data["task"] == "quote/c1"
    assert {n["ref"]: n["role"] for n in data["nodes"]} == {
        "kyc/c1": "upstream", "risk/c1": "upstream", "quote/c1": "task",
        "notify/c1": "downstream",
    }
    assert sorted((e["from"], e["name"], e["to"]) for e in data["edges"]) == [
        ("kyc/c1", "kyc.passed", "quote/c1"), ("quote/c1", "quote.ready", "notify/c1"),
        ("risk/c1", "risk.scored", "quote/c1"),
    ]
    text = tether(project, "graph", "--task", "quote/c1").stdout
    assert "kyc/c1 [succeeded] --kyc.passed--> quote/c1 [succeeded]" in text
    assert "quote/c1 [succeeded] --quote.ready--> notify/c1 [succeeded]" in text
    mermaid = tether(project, "graph", "--task", "notify/c1", "-f", "mermaid").stdout
    assert mermaid.count("-->|") == 3 and "notify/c1<br/>succeeded" in mermaid


def test_errors_are_one_line(project: Path) -> None:
    for args, message in (
        (("why", "nobody/c1"), "error: no task 'nobody/c1'"),
        (("why", "quote/c1", "--run", "999999"), "error: no run 999999"),
        (("why-not", "nobody", "c1"), "error: no agent named 'nobody'"),
        (("graph", "--task", "nobody/c1"), "error: no task 'nobody/c1'"),
    ):
        proc = tether(project, *args, check=False)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr


def test_why_and_why_not_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    env = env_for(tmp_path, TETHER_DATABASE_URL=pg_url)
    project = _make(tmp_path, env)
    [kyc_run] = _run_ids(project, "kyc/c2", env=env)

    answer = _json(project, "why-not", "notify", "c2", env=env)
    assert [(c["task"], c["reason"], c["run_id"]) for c in answer["root_causes"]] == [
        ("kyc/c2", "sanctions match", kyc_run)
    ]
    missing = _json(project, "why-not", "notify", "c3", env=env)
    assert [(c["task"], c["state"]) for c in missing["root_causes"]] == [
        ("risk/c3", "never submitted")
    ]
    chain = _json(project, "why", "notify/c1", env=env)
    assert chain["depth"] == 2
    assert [e["upstream_task"] for e in chain["chain"]["triggered_by"][0]["upstream"][
        "triggered_by"]] == ["kyc/c1", "risk/c1"]
