"""Provenance from recorded rows: `why`, `why-not` and the tasks around one task.

Every graph here is run by a real local worker on a real store (a SQLite file and a
PostgreSQL database), and every answer is checked against the rows the worker recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import tether
from tether import Agent, Context, NotFound, Project, RetryPolicy, TaskStatus, WorkerStats
from tether.graph import build, task_graph, why, why_not
from tether.graph.render import render_agents, render_tasks
from tether.store import RunStatus

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

FAST = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0)


def _case_agents() -> list[Agent]:
    """kyc and risk (roots) -> quote (a join of both) -> notify.

    kyc fails terminally for c2 (a sanctions hit); risk fails retryably on its first
    attempt for c1 and on every attempt for c4 (it gives up after two).
    """

    @tether.agent(emits="kyc.passed", team="compliance", retry=FAST)
    def kyc(ctx: Context) -> dict[str, Any]:
        with ctx.step("screen sanctions", input={"case": ctx.key}) as step:
            step.output = {"hit": ctx.key == "c2"}
        if ctx.key == "c2" and not ctx.note:  # an operator's note clears the hit
            raise tether.Terminal("sanctions match")
        return {"verified": True}

    @tether.agent(emits="risk.scored", team="risk", retry=FAST)
    def risk(ctx: Context) -> dict[str, Any]:
        if ctx.key == "c4" or (ctx.key == "c1" and ctx.attempt == 1):
            raise tether.Retryable("credit bureau unavailable")
        with ctx.step("score", input={"case": ctx.key}) as step:
            step.output = {"score": 7}
        return {"score": 7}

    @tether.agent(subscribes=["kyc.passed", "risk.scored"], emits="quote.ready", team="sales",
                  retry=FAST)
    def quote(ctx: Context) -> dict[str, Any]:
        with ctx.step("price") as step:
            step.output = {"premium": 100 + ctx.upstream["risk.scored"]["score"]}
        return {"premium": step.output["premium"]}

    @tether.agent(subscribes="quote.ready", team="sales", retry=FAST)
    def notify(ctx: Context) -> dict[str, Any]:
        with ctx.step("email broker", key=f"email:{ctx.key}") as step:
            step.output = "sent"
        return {"sent": True}

    return [kyc, risk, quote, notify]


@pytest.fixture
def cases(make_project: MakeProject, run_idle: RunIdle, store_url: str) -> Project:
    """c1 goes through (risk after one retry); c2's kyc fails terminally; c3's risk is never
    submitted; c4's risk gives up after two retryable failures."""
    project = make_project(_case_agents(), database_url=store_url)
    for key in ("c1", "c2", "c3", "c4"):
        project.submit("kyc", key)
        if key != "c3":
            project.submit("risk", key)
    run_idle(project)
    return project


def _runs(project: Project, ref: str) -> list[tether.Run]:
    return project.store.runs_of(project.store.get_task(ref).id)


# -- why -------------------------------------------------------------------------------------


def test_why_walks_the_recorded_edges_up_to_the_roots(cases: Project) -> None:
    store = cases.store
    [notify_run] = _runs(cases, "notify/c1")
    [quote_run] = _runs(cases, "quote/c1")
    [kyc_run] = _runs(cases, "kyc/c1")
    risk_failed, risk_ok = _runs(cases, "risk/c1")
    assert (risk_failed.status, risk_ok.status) == (RunStatus.FAILED, RunStatus.SUCCEEDED)

    answer = why(store, "notify/c1")

    assert answer.depth == 2
    assert answer.root.run is not None and answer.root.run.id == notify_run.id
    assert [s.name for s in answer.root.run.steps] == ["email broker"]
    [edge] = answer.root.triggered_by
    assert (edge.trigger.name, edge.trigger.upstream_ref) == ("quote.ready", "quote/c1")
    quote_node = edge.upstream
    assert quote_node.run is not None and quote_node.run.id == quote_run.id
    assert quote_node.run.output == {"premium": 107}
    assert [s.name for s in quote_node.run.steps] == ["price"]
    feeding = [
        (e.trigger.name, e.upstream.task.ref, e.upstream.run.id if e.upstream.run else None)
        for e in quote_node.triggered_by
    ]
    # The run that emitted the edge: risk's retry, not its failed first attempt.
    assert feeding == [("kyc.passed", "kyc/c1", kyc_run.id), ("risk.scored", "risk/c1", risk_ok.id)]
    risk_node = quote_node.triggered_by[1].upstream
    assert risk_node.run is not None
    assert (risk_node.run.attempt, risk_node.run.reason) == (2, "retry")
    assert [s.name for s in risk_node.run.steps] == ["score"]
    assert all(not e.upstream.triggered_by for e in quote_node.triggered_by)  # roots

    data = json.loads(json.dumps(answer.to_dict()))
    assert (data["task"], data["depth"]) == ("notify/c1", 2)
    chain = data["chain"]
    assert chain["run"]["id"] == notify_run.id
    [up] = chain["triggered_by"]
    assert (up["trigger"], up["upstream_task"], up["upstream_run_id"]) == (
        "quote.ready", "quote/c1", quote_run.id,
    )
    assert [
        (e["trigger"], e["upstream"]["task"]["ref"], e["upstream"]["run"]["steps"][0]["name"])
        for e in up["upstream"]["triggered_by"]
    ] == [("kyc.passed", "kyc/c1", "screen sanctions"), ("risk.scored", "risk/c1", "score")]

    by_id = why(store, store.get_task("notify/c1").id)
    assert by_id.to_dict() == answer.to_dict()


def test_why_of_a_task_without_success_shows_what_fired(cases: Project) -> None:
    [risk_run] = _runs(cases, "risk/c2")

    answer = why(cases.store, "quote/c2")

    assert answer.root.run is None
    assert answer.root.note is not None and "tether why-not quote c2" in answer.root.note
    assert [(e.trigger.name, e.trigger.upstream_run_id) for e in answer.root.triggered_by] == [
        ("risk.scored", risk_run.id)
    ]


def test_why_of_one_run_and_of_what_is_not_there(cases: Project) -> None:
    failed, ok = _runs(cases, "risk/c1")
    [kyc_run] = _runs(cases, "kyc/c1")

    first = why(cases.store, "risk/c1", run_id=failed.id)
    assert first.root.run is not None and first.root.run.id == failed.id
    assert first.root.run.failure_reason == "credit bureau unavailable"
    assert why(cases.store, "risk/c1").root.run.id == ok.id  # type: ignore[union-attr]

    with pytest.raises(NotFound, match="is not a run of risk/c1"):
        why(cases.store, "risk/c1", run_id=kyc_run.id)
    with pytest.raises(NotFound, match="no task 'nobody/c1'"):
        why(cases.store, "nobody/c1")


def test_why_follows_the_edges_that_fed_each_run(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    """A long-lived task: new input runs the upstream again, which triggers the downstream
    again. Each downstream run is explained by the upstream run that fed it."""

    @tether.agent(emits="intake.done", retry=FAST)
    def intake(ctx: Context) -> dict[str, Any]:
        return {"version": ctx.input["v"]}

    @tether.agent(subscribes="intake.done", retry=FAST)
    def review(ctx: Context) -> dict[str, Any]:
        return {"reviewed": ctx.upstream["intake.done"]["version"]}

    project = make_project([intake, review], database_url=store_url)
    project.submit("intake", "k1", {"v": 1})
    run_idle(project)
    time.sleep(0.01)  # the second firing is recorded strictly later
    project.submit("intake", "k1", {"v": 2})
    run_idle(project)
    up1, up2 = _runs(project, "intake/k1")
    down1, down2 = _runs(project, "review/k1")
    assert (down1.output, down2.output) == ({"reviewed": 1}, {"reviewed": 2})

    latest = why(project.store, "review/k1")
    first = why(project.store, "review/k1", run_id=down1.id)

    assert [e.upstream.run.id for e in latest.root.triggered_by] == [up2.id]  # type: ignore[union-attr]
    assert [e.upstream.run.id for e in first.root.triggered_by] == [up1.id]  # type: ignore[union-attr]


def test_why_reads_a_shared_upstream_once(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    @tether.agent(emits="a.done")
    def a(ctx: Context) -> int:
        return 1

    @tether.agent(subscribes="a.done", emits="b.done")
    def b(ctx: Context) -> int:
        return 2

    @tether.agent(subscribes="a.done", emits="c.done")
    def c(ctx: Context) -> int:
        return 3

    @tether.agent(subscribes=["b.done", "c.done"])
    def d(ctx: Context) -> int:
        return 4

    project = make_project([a, b, c, d], database_url=store_url)
    project.submit("a", "x")
    run_idle(project)

    answer = why(project.store, "d/x")

    assert answer.depth == 2
    via_b, via_c = answer.root.triggered_by
    assert (via_b.upstream.task.ref, via_c.upstream.task.ref) == ("b/x", "c/x")
    assert via_b.upstream.triggered_by[0].upstream is via_c.upstream.triggered_by[0].upstream
    assert [c.task.ref for c in answer.root.walk()] == ["d/x", "b/x", "a/x", "c/x", "a/x"]


# -- why not ---------------------------------------------------------------------------------


def test_why_not_reaches_the_terminal_failure_up_the_graph(cases: Project) -> None:
    [kyc_run] = _runs(cases, "kyc/c2")
    [risk_run] = _runs(cases, "risk/c2")

    answer = why_not(cases.store, cases.graph, "notify", "c2")

    assert not answer.ran
    [cause] = answer.root_causes
    assert (cause.task, cause.state, cause.failure_class, cause.reason, cause.run_id) == (
        "kyc/c2", TaskStatus.FAILED.value, "terminal", "sanctions match", kyc_run.id,
    )
    assert cause.summary.startswith("kyc/c2 failed terminally: sanctions match")
    assert f"run {kyc_run.id}" in cause.summary
    target = answer.target
    assert (target.ref, target.task, target.state) == ("notify/c2", None, "not created")
    [quote_ready] = target.triggers
    assert (quote_ready.name, quote_ready.fired) == ("quote.ready", False)
    [quote] = quote_ready.upstream
    assert (quote.ref, quote.state, quote.runs) == ("quote/c2", TaskStatus.PENDING.value, ())
    kyc_check, risk_check = quote.triggers
    assert (kyc_check.name, kyc_check.fired, risk_check.name, risk_check.fired) == (
        "kyc.passed", False, "risk.scored", True,
    )
    assert [(e.upstream_ref, e.upstream_run_id) for e in risk_check.edges] == [
        ("risk/c2", risk_run.id)
    ]
    [kyc] = kyc_check.upstream
    assert (kyc.ref, [r.id for r in kyc.runs]) == ("kyc/c2", [kyc_run.id])

    data = json.loads(json.dumps(answer.to_dict()))
    assert (data["task"], data["ran"]) == ("notify/c2", False)
    assert [(c["task"], c["failure_class"], c["reason"], c["run_id"]) for c in
            data["root_causes"]] == [("kyc/c2", "terminal", "sanctions match", kyc_run.id)]
    quote_json = data["explanation"]["triggers"][0]["upstream"][0]
    assert [(t["trigger"], t["fired"]) for t in quote_json["triggers"]] == [
        ("kyc.passed", False), ("risk.scored", True),
    ]
    assert quote_json["triggers"][0]["upstream"][0]["runs"][0]["failure_reason"] == (
        "sanctions match"
    )


def test_why_not_names_the_upstream_task_never_submitted(cases: Project) -> None:
    answer = why_not(cases.store, cases.graph, "quote", "c3")

    [cause] = answer.root_causes
    assert (cause.task, cause.state, cause.task_id, cause.run_id) == (
        "risk/c3", "never submitted", None, None,
    )
    assert "`tether submit risk c3`" in cause.summary
    kyc_check, risk_check = answer.target.triggers
    assert kyc_check.fired and kyc_check.edges[0].upstream_ref == "kyc/c3"
    assert not risk_check.fired and risk_check.upstream[0].task is None
    assert answer.target.state == TaskStatus.PENDING.value
    assert answer.summary == cause.summary


def test_why_not_names_retries_given_up(cases: Project) -> None:
    first, last = _runs(cases, "risk/c4")

    answer = why_not(cases.store, cases.graph, "quote", "c4")

    [cause] = answer.root_causes
    assert (cause.task, cause.state, cause.failure_class, cause.run_id) == (
        "risk/c4", TaskStatus.FAILED.value, "retryable", last.id,
    )
    assert cause.reason.startswith("credit bureau unavailable")
    assert "gave up after 2 attempts" in cause.reason
    risk = answer.target.triggers[1].upstream[0]
    assert [(r.id, r.attempt) for r in risk.runs] == [(first.id, 1), (last.id, 2)]


def test_why_not_of_a_task_that_ran_points_to_why(cases: Project) -> None:
    [run] = _runs(cases, "quote/c1")

    answer = why_not(cases.store, cases.graph, "quote", "c1")

    assert answer.ran and answer.root_causes == ()
    assert f"run {run.id} succeeded" in answer.summary and "tether why quote/c1" in answer.summary
    assert [(t.name, t.fired) for t in answer.target.triggers] == [
        ("kyc.passed", True), ("risk.scored", True),
    ]


def test_why_not_of_a_join_submitted_directly(cases: Project, run_idle: RunIdle) -> None:
    cases.submit("quote", "c7")  # by hand: no upstream output to read
    run_idle(cases)
    [run] = _runs(cases, "quote/c7")

    answer = why_not(cases.store, cases.graph, "quote", "c7")

    [cause] = answer.root_causes
    assert (cause.task, cause.state, cause.run_id, cause.failure_class) == (
        "quote/c7", TaskStatus.FAILED.value, run.id, "terminal",
    )
    assert "KeyError" in cause.reason and "risk.scored" in cause.reason
    assert [(t.name, t.fired, t.note) for t in answer.target.triggers] == [
        ("kyc.passed", False, "did not fire: quote/c7 was started without it"),
        ("risk.scored", False, "did not fire: quote/c7 was started without it"),
    ]


def test_why_not_when_nothing_was_submitted(cases: Project) -> None:
    root = why_not(cases.store, cases.graph, "kyc", "c9")
    deep = why_not(cases.store, cases.graph, "notify", "c9")

    assert [(c.task, c.state) for c in root.root_causes] == [("kyc/c9", "never submitted")]
    assert [(c.task, c.state) for c in deep.root_causes] == [
        ("kyc/c9", "never submitted"), ("risk/c9", "never submitted"),
    ]
    with pytest.raises(tether.DiscoveryError, match="no agent named 'nobody'"):
        why_not(cases.store, cases.graph, "nobody", "c9")


def test_why_not_names_operator_actions(cases: Project, run_idle: RunIdle) -> None:
    store = cases.store
    cases.submit("kyc", "c5")
    store.cancel_task("kyc/c5", note="duplicate application", actor="alice")
    [failed] = _runs(cases, "kyc/c2")

    cancelled = why_not(store, cases.graph, "quote", "c5")
    _action, retry_run = store.retry_task("kyc/c2", note="cleared by compliance", actor="bob")
    retried = why_not(store, cases.graph, "notify", "c2")

    kyc, risk = cancelled.root_causes
    assert (kyc.task, kyc.state, kyc.reason) == (
        "kyc/c5", TaskStatus.CANCELLED.value, "cancelled by alice: duplicate application",
    )
    assert kyc.summary.startswith("kyc/c5 was cancelled by alice at ")
    assert "duplicate application" in kyc.summary
    assert (risk.task, risk.state) == ("risk/c5", "never submitted")
    [cause] = retried.root_causes
    assert (cause.task, cause.state, cause.run_id, cause.reason) == (
        "kyc/c2", TaskStatus.QUEUED.value, retry_run, "still queued",
    )
    assert (
        f"(operator) has not started yet; note: cleared by compliance; before it, run "
        f"{failed.id} failed: sanctions match"
    ) in cause.summary

    run_idle(cases)
    chain = why(store, "notify/c2")
    kyc_node = chain.root.triggered_by[0].upstream.triggered_by[0].upstream
    assert kyc_node.run is not None
    assert (kyc_node.task.ref, kyc_node.run.id, kyc_node.run.reason, kyc_node.run.note) == (
        "kyc/c2", retry_run, "operator", "cleared by compliance",
    )


def test_why_not_names_work_still_on_its_way(
    make_project: MakeProject, store_url: str
) -> None:
    gate = threading.Event()

    @tether.agent(emits="slow.done",
                  retry=RetryPolicy(max_attempts=3, initial_delay=3600, jitter=0))
    def slow(ctx: Context) -> None:
        if ctx.key == "t1":
            raise tether.Retryable("upstream said 503")
        gate.wait(20)

    @tether.agent(subscribes="slow.done")
    def after(ctx: Context) -> None:
        return None

    project = make_project([slow, after], database_url=store_url)
    project.submit("slow", "q1")
    queued = why_not(project.store, project.graph, "after", "q1")
    [cause] = queued.root_causes
    assert (cause.task, cause.state, cause.reason) == ("slow/q1", "queued", "still queued")

    project.submit("slow", "r1")
    project.submit("slow", "t1")
    worker = project.worker(poll_interval=0.01, concurrency=4)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            statuses = {t.ref: t.status for t in project.store.list_tasks(agent="slow")}
            if statuses == {"slow/q1": TaskStatus.RUNNING, "slow/r1": TaskStatus.RUNNING,
                            "slow/t1": TaskStatus.RETRYING}:
                break
            time.sleep(0.02)
        running = why_not(project.store, project.graph, "after", "r1")
        retrying = why_not(project.store, project.graph, "after", "t1")
    finally:
        gate.set()
        worker.stop()
        thread.join(30)
    [cause] = running.root_causes
    assert (cause.task, cause.state, cause.reason) == ("slow/r1", "running", "still running")
    [cause] = retrying.root_causes
    failed, queued_retry = _runs(project, "slow/t1")
    assert (cause.task, cause.state, cause.run_id, cause.failure_class) == (
        "slow/t1", "retrying", failed.id, "retryable",
    )
    assert cause.reason == "still retrying after: upstream said 503"
    assert f"attempt 2 (run {queued_retry.id}) is due at" in cause.summary


def test_why_not_cannot_infer_through_a_key_function(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    @tether.agent(emits="doc.read")
    def doc(ctx: Context) -> dict[str, Any]:
        return {"case": ctx.input["case"]}

    @tether.agent(subscribes="doc.read", key=lambda up: up.output["case"])
    def case(ctx: Context) -> str:
        return ctx.upstream_tasks["doc.read"]

    project = make_project([doc, case], database_url=store_url)
    project.submit("doc", "d1", {"case": "k1"})
    project.submit("doc", "k2", {"case": "elsewhere"})
    run_idle(project)

    fed = why(project.store, "case/k1")
    assert [e.upstream.task.ref for e in fed.root.triggered_by] == ["doc/d1"]

    answer = why_not(project.store, project.graph, "case", "k2")
    [cause] = answer.root_causes
    assert (cause.task, cause.state, cause.trigger) == ("case/k2", "cannot infer", "doc.read")
    assert "key function" in cause.summary and "doc/k2" in cause.summary
    [check] = answer.target.triggers
    assert [u.ref for u in check.upstream] == ["doc/k2"]

    none_like = why_not(project.store, project.graph, "case", "k3")
    assert [u.ref for u in none_like.target.triggers[0].upstream] == []
    assert none_like.root_causes[0].state == "cannot infer"


def test_why_not_names_an_upstream_that_succeeded_without_emitting(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    @tether.agent(emits=lambda out: "screen.clear" if out["clear"] else None,
                  may_emit=["screen.clear"])
    def screen(ctx: Context) -> dict[str, Any]:
        return {"clear": ctx.input["clear"]}

    @tether.agent(subscribes="screen.clear")
    def approve(ctx: Context) -> None:
        return None

    project = make_project([screen, approve], database_url=store_url)
    project.submit("screen", "s1", {"clear": False})
    run_idle(project)
    [run] = _runs(project, "screen/s1")

    answer = why_not(project.store, project.graph, "approve", "s1")

    [cause] = answer.root_causes
    assert (cause.task, cause.state, cause.run_id, cause.trigger) == (
        "screen/s1", "did not emit", run.id, "screen.clear",
    )
    assert "did not emit screen.clear; it emitted no trigger" in cause.summary


def test_why_not_names_a_subscriber_added_after_the_run(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    @tether.agent(emits="kyc.passed")
    def kyc(ctx: Context) -> None:
        return None

    @tether.agent(subscribes="kyc.passed")
    def audit(ctx: Context) -> None:
        return None

    @tether.agent(subscribes="kyc.passed")
    def quote(ctx: Context) -> None:
        return None

    before = make_project([kyc, audit], database_url=store_url)
    before.submit("kyc", "c1")
    run_idle(before)
    [run] = _runs(before, "kyc/c1")
    after = make_project([kyc, audit, quote], database_url=store_url)  # quote deployed later

    answer = why_not(after.store, after.graph, "quote", "c1")

    [cause] = answer.root_causes
    assert (cause.task, cause.state, cause.run_id) == ("kyc/c1", "did not emit", run.id)
    assert cause.summary == (
        f"kyc/c1 succeeded (run {run.id}) and emitted kyc.passed to audit/c1, but not to "
        "quote/c1 (did quote subscribe to kyc.passed only after that run?)"
    )


# -- the tasks around one, and the renderings ------------------------------------------------


def test_task_graph_collects_upstream_and_downstream(cases: Project) -> None:
    tg = task_graph(cases.store, "quote/c1")

    refs = {t.id: t.ref for t in tg.tasks}
    assert sorted(refs[i] for i in tg.upstream) == ["kyc/c1", "risk/c1"]
    assert sorted(refs[i] for i in tg.downstream) == ["notify/c1"]
    assert sorted((e.upstream_ref, e.name, e.downstream_ref) for e in tg.edges) == [
        ("kyc/c1", "kyc.passed", "quote/c1"),
        ("quote/c1", "quote.ready", "notify/c1"),
        ("risk/c1", "risk.scored", "quote/c1"),
    ]
    data = json.loads(render_tasks(tg, "json"))
    assert {n["ref"]: n["role"] for n in data["nodes"]} == {
        "kyc/c1": "upstream", "risk/c1": "upstream", "quote/c1": "task",
        "notify/c1": "downstream",
    }
    text = render_tasks(tg, "text")
    assert "kyc/c1 [succeeded] --kyc.passed--> quote/c1 [succeeded]" in text
    assert "quote/c1 [succeeded] --quote.ready--> notify/c1 [succeeded]" in text
    mermaid = render_tasks(tg, "mermaid")
    ids = {t.ref: f"t{t.id}" for t in tg.tasks}
    assert f'{ids["kyc/c1"]} -->|"kyc.passed"| {ids["quote/c1"]}' in mermaid
    dot = render_tasks(tg, "dot")
    assert f'{ids["quote/c1"]} -> {ids["notify/c1"]} [label="quote.ready"];' in dot

    root = task_graph(cases.store, "kyc/c2")
    assert (root.upstream, root.downstream, root.edges) == (frozenset(), frozenset(), ())


def test_agent_graph_renders_in_every_format() -> None:
    graph = build(_case_agents())

    data = json.loads(render_agents(graph, "json"))
    names = [n["name"] for n in data["nodes"]]
    assert names.index("quote") > max(names.index("kyc"), names.index("risk"))
    assert names.index("notify") > names.index("quote")
    assert {(n["name"], n["team"], n["root"]) for n in data["nodes"]} == {
        ("kyc", "compliance", True), ("risk", "risk", True), ("quote", "sales", False),
        ("notify", "sales", False),
    }
    assert sorted((e["from"], e["trigger"], e["to"]) for e in data["edges"]) == [
        ("kyc", "kyc.passed", "quote"), ("quote", "quote.ready", "notify"),
        ("risk", "risk.scored", "quote"),
    ]
    text = render_agents(graph, "text")
    assert "quote  (team sales)" in text
    assert "subscribes: kyc.passed ← kyc, risk.scored ← risk  (a join" in text
    assert "emits:      quote.ready → notify" in text
    mermaid = render_agents(graph, "mermaid")
    assert mermaid.startswith("flowchart LR\n")
    assert mermaid.count("-->|") == 3 and 'subgraph g0["compliance"]' in mermaid
    dot = render_agents(graph, "dot")
    assert dot.startswith("digraph tether {") and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == 3 and 'label="sales";' in dot
    with pytest.raises(ValueError, match="unknown graph format 'svg'"):
        render_agents(graph, "svg")


def test_graph_renderings_escape_names() -> None:
    @tether.agent(emits="x.done", team='ops "east" <1>')
    def source(ctx: Context) -> None:
        return None

    graph = build([source])

    assert 'label="ops \\"east\\" <1>";' in render_agents(graph, "dot")
    assert 'subgraph g0["ops #quot;east#quot; #lt;1#gt;"]' in render_agents(graph, "mermaid")


def test_every_task_status_reads_as_a_phrase() -> None:
    from tether.graph.why_not import STATUS_PHRASES, status_phrase

    assert set(STATUS_PHRASES) == {s.value for s in TaskStatus}
    assert status_phrase(TaskStatus.FAILED) == "failed"
    assert status_phrase("frozen") == "is frozen"  # a status added later still reads
