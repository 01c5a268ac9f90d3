"""`tether demo`: the bundled example runs with no set-up and records a real story."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from rich.console import Console

import tether
from tether.demo import run_demo
from tether.demo.service import DemoService
from tether.store import FailureClass, RunStatus, TaskStatus

QUOTE_NEEDS = {"kyc.passed", "risk.scored", "pricing.priced"}


def _console() -> Console:
    return Console(file=io.StringIO(), width=120, color_system=None)


def _output(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def test_demo_runs_retries_fails_terminally_and_quotes(tmp_path: Path) -> None:
    console = _console()
    started = time.monotonic()
    result = run_demo(tmp_path, console=console)
    assert time.monotonic() - started < 10
    out = _output(console)

    assert (tmp_path / ".tether" / "tether.db").is_file()
    with tether.Project.load(tmp_path) as project:
        store = project.store
        tasks = store.list_tasks(limit=1000)
        assert {t.agent for t in tasks} == {"kyc", "risk", "pricing", "quote"}
        assert all(
            t.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.PENDING) for t in tasks
        )

        # Retries happened because the service answered 503, and they were recorded.
        retried = [t for t in tasks if t.runs > 1]
        assert retried, "no task was retried"
        for task in retried:
            runs = store.runs_of(task.id)
            assert [r.attempt for r in runs] == list(range(1, len(runs) + 1))
            assert runs[-1].status == RunStatus.SUCCEEDED
            for failed in runs[:-1]:
                assert failed.status == RunStatus.FAILED
                assert failed.failure_class == FailureClass.RETRYABLE
                assert "503" in (failed.failure_reason or "")
                assert any(s.status == "failed" and "503" in (s.error or "") for s in failed.steps)
            assert all(r.reason == "retry" for r in runs[1:])
        assert result.retries_queued == sum(t.runs - 1 for t in retried)
        assert result.service_503s == result.retries_queued

        # Exactly one case failed KYC terminally, once, and its quote never ran.
        failed_kyc = [t for t in tasks if t.agent == "kyc" and t.status == TaskStatus.FAILED]
        assert len(failed_kyc) == 1
        blocked = failed_kyc[0]
        (only_run,) = store.runs_of(blocked.id)
        assert only_run.failure_class == FailureClass.TERMINAL
        assert "sanctions match" in (only_run.failure_reason or "")
        assert [s.name for s in only_run.steps] == [
            "fetch identity record",
            "screen sanctions list",
        ]
        assert only_run.steps[1].output["match"] is True
        assert store.triggers_out(blocked.id) == []
        quote_tasks = {t.key: t for t in tasks if t.agent == "quote"}
        blocked_quote = quote_tasks.get(blocked.key)
        assert blocked_quote is None or blocked_quote.runs == 0
        if blocked_quote is not None:
            fired = {tr.name for tr in store.triggers_in(blocked_quote.id)}
            assert "kyc.passed" not in fired
        assert f"tether show kyc/{blocked.key}" in out
        assert "sanctions match" in out

        # Every other case has a succeeded quote, joined from exactly three triggers.
        keys = sorted({t.key for t in tasks})
        assert keys == ["case-001", "case-002", "case-003"]
        completed = [k for k in keys if k != blocked.key]
        for key in completed:
            quote = store.get_task(f"quote/{key}")
            assert quote.status == TaskStatus.SUCCEEDED
            edges = store.triggers_in(quote.id)
            assert len(edges) == 3
            assert {e.name for e in edges} == QUOTE_NEEDS
            assert {e.upstream_ref for e in edges} == {
                f"kyc/{key}",
                f"risk/{key}",
                f"pricing/{key}",
            }
            (run,) = store.runs_of(quote.id)
            assert run.reason == "trigger"
            premium = run.output["premium"]
            assert isinstance(premium, float) and premium > 0
            assert f"{premium:,.2f}" in out
            assert result.case(key).premium == premium
            assert [s.name for s in run.steps] == ["combine upstream decisions", "issue quote"]

        # The returned result says what the store says.
        for case in result.cases:
            for agent in ("kyc", "risk", "pricing", "quote"):
                found = [t for t in tasks if t.agent == agent and t.key == case.case]
                if found:
                    assert case.status[agent] == found[0].status.value
                    assert case.runs[agent] == found[0].runs
                else:
                    assert case.status[agent] == "missing"
        assert result.case(blocked.key).premium is None
        assert "kyc.passed never fired" in (result.case(blocked.key).why_no_quote or "")
        total_runs = sum(t.runs for t in tasks)
        assert result.runs_executed == total_runs

    # The summary ends with the commands to look further.
    assert "Look further" in out
    for command in (
        "tether tasks",
        f"tether show quote/{completed[0]}",
        "tether tasks --status failed --json",
    ):
        assert command in out

    # Running it again in the same folder is idempotent: no new runs, same summary.
    console2 = _console()
    again = run_demo(tmp_path, console=console2)
    out2 = _output(console2)
    assert again.already_ran and not result.already_ran
    assert again.runs_executed == 0
    assert again.cases == result.cases
    with tether.Project.load(tmp_path) as project:
        assert sum(t.runs for t in project.store.list_tasks(limit=1000)) == total_runs
    assert "already ran" in out2
    assert "tether show quote/case-001" in out2
    for key in completed:
        premium = result.case(key).premium
        assert premium is not None and f"{premium:,.2f}" in out2


def test_service_fails_deterministically() -> None:
    with DemoService() as service, httpx.Client(base_url=service.url, trust_env=False) as http:
        # case-001: the credit bureau fails the first call, then answers.
        assert http.get("/credit/case-001").status_code == 503
        assert http.get("/credit/case-001").status_code == 200
        # case-003: the rating engine fails twice for it.
        codes = [http.get("/rates/home", params={"case": "case-003"}).status_code for _ in range(3)]
        assert codes == [503, 503, 200]
        # case-002's applicant is on the sanctions list; case-001's is not.
        name2 = http.get("/identity/case-002").json()["name"]
        hit = http.get("/sanctions", params={"name": name2, "case": "case-002"}).json()
        assert hit["match"] is True
        name1 = http.get("/identity/case-001").json()["name"]
        assert http.get("/sanctions", params={"name": name1}).json()["match"] is False
        assert http.get("/identity/nobody").status_code == 404
        assert service.stats.unavailable == 3
    assert service.stats.calls == 10


def test_service_issues_quotes_and_shows_what_it_issued() -> None:
    # What the quote agent reconciles with after a run died during its call.
    with DemoService(latency=0.05) as service, \
            httpx.Client(base_url=service.url, trust_env=False) as http:
        assert http.get("/quotes/case-001").status_code == 404
        began = time.monotonic()
        issued = http.post("/quotes", json={"case": "case-001", "premium": 120.5})
        assert time.monotonic() - began >= 0.05  # answered late, as configured
        assert issued.status_code == 201 and issued.json()["quote_id"] == "Q-001"
        assert http.get("/quotes/case-001").json() == issued.json()
        http.post("/quotes", json={"case": "case-001", "premium": 120.5})
        assert service.quotes_issued == {"case-001": 2}  # counted: the effect happened twice
    with pytest.raises(ValueError, match="latency"):
        DemoService(latency=-1)


def test_service_holding_quotes_issues_them_and_answers_on_release() -> None:
    # How the chaos test lands a kill inside the quote call on any machine: the quote is
    # issued, and its caller still waits.
    with DemoService() as service, httpx.Client(base_url=service.url, trust_env=False) as http, \
            ThreadPoolExecutor(1) as pool:
        with service.holding_quotes():
            answer = pool.submit(http.post, "/quotes", json={"case": "case-004", "premium": 9})
            deadline = time.monotonic() + 5
            while not service.quotes_issued and time.monotonic() < deadline:
                time.sleep(0.01)
            assert service.quotes_issued == {"case-004": 1}
            time.sleep(0.3)
            assert not answer.done()  # issued, not answered
        assert answer.result(timeout=5).status_code == 201
        began = time.monotonic()
        assert http.post("/quotes", json={"case": "case-005", "premium": 9}).status_code == 201
        assert time.monotonic() - began < 1  # released: answered at once again


def test_demo_refuses_a_store_with_other_agents_work(tmp_path: Path) -> None:
    # The demo's worker runs until nothing is queued anywhere in the store: in a project
    # with its own queued work it would claim those runs too, so it refuses to start.
    @tether.agent
    def underwriting(ctx: tether.Context) -> None:
        return None

    with tether.Project.load(tmp_path, agents=[underwriting]) as project:
        project.submit("underwriting", "policy-9", {"x": 1})
    console = _console()
    with pytest.raises(tether.ConfigError, match="underwriting"):
        run_demo(tmp_path, console=console)
    with tether.Project.load(tmp_path) as project:
        (task,) = project.store.list_tasks()
        assert task.ref == "underwriting/policy-9"
        assert task.status == TaskStatus.QUEUED


def test_the_demo_folder_knows_its_agents_afterwards(tmp_path: Path) -> None:
    run_demo(tmp_path, console=Console(file=io.StringIO()))
    graph = tether.Project.load(tmp_path).graph  # discovery, as `tether why-not` does it
    assert sorted(graph.agents) == ["kyc", "pricing", "quote", "risk"]
    assert "tether.demo.agents" in (tmp_path / "tether.toml").read_text()
