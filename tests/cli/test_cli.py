"""The `tether` command as a new user drives it: init, agents, submit, worker, tasks, show, db."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.process.helpers import env_for, tether


@pytest.fixture
def project(tmp_path: Path) -> Path:
    tether(tmp_path, "init", ".")
    return tmp_path


def test_init_makes_a_runnable_project(project: Path) -> None:
    assert (project / "tether.toml").is_file()
    assert (project / "agents" / "example.py").is_file()
    again = tether(project, "init", ".")
    assert "nothing to do" in again.stdout  # never overwrites

    agents = json.loads(tether(project, "agents", "--json").stdout)
    assert [(a["name"], a["subscribes"], a["emits"]) for a in agents] == [
        ("greet", [], ["greeting.sent"]),
        ("log_greeting", ["greeting.sent"], []),
    ]
    sub = json.loads(tether(project, "submit", "greet", "ada", "--input", '{"name": "Ada"}',
                            "--json").stdout)
    assert sub["created"] is True and sub["run_id"] is not None
    again_sub = json.loads(
        tether(project, "submit", "greet", "ada", "--input", '{"name": "Ada"}', "--json").stdout
    )
    assert (again_sub["task_id"], again_sub["created"], again_sub["run_id"]) == (
        sub["task_id"], False, None
    )
    stats = json.loads(tether(project, "worker", "--until-idle", "--json").stdout)
    assert (stats["succeeded"], stats["failed"]) == (2, 0)

    shown = json.loads(tether(project, "show", "log_greeting/ada", "--json").stdout)
    assert shown["status"] == "succeeded"
    assert shown["runs"][0]["output"] == {"logged": "Hello, Ada!"}
    assert [(t["name"], t["upstream_ref"]) for t in shown["triggers_in"]] == [
        ("greeting.sent", "greet/ada")
    ]
    by_id = json.loads(tether(project, "show", str(sub["task_id"]), "--json").stdout)
    assert by_id["ref"] == "greet/ada"
    assert by_id["inputs"][0]["data"] == {"name": "Ada"}
    assert [s["name"] for s in by_id["runs"][0]["steps"]] == ["compose greeting"]

    human = tether(project, "show", "greet/ada").stdout
    assert "compose greeting" in human and "greeting.sent → log_greeting/ada" in human


def test_tasks_filters_and_json(project: Path) -> None:
    (project / "agents" / "more.py").write_text(textwrap.dedent(
        """
        import tether

        @tether.agent
        def broken(ctx):
            raise tether.Terminal("bad input: no case number")
        """
    ))
    tether(project, "submit", "greet", "bob")
    tether(project, "submit", "broken", "x")
    tether(project, "worker", "--until-idle", "--quiet")
    failed = json.loads(tether(project, "tasks", "--status", "failed", "--json").stdout)
    assert [t["ref"] for t in failed] == ["broken/x"]
    greet = json.loads(tether(project, "tasks", "--agent", "greet", "--json").stdout)
    assert [(t["ref"], t["status"]) for t in greet] == [("greet/bob", "succeeded")]
    everything = json.loads(tether(project, "tasks", "--json").stdout)
    assert {t["ref"] for t in everything} == {"greet/bob", "broken/x", "log_greeting/bob"}
    shown = json.loads(tether(project, "show", "broken/x", "--json").stdout)
    assert shown["runs"][0]["failure_class"] == "terminal"
    assert shown["runs"][0]["failure_reason"] == "bad input: no case number"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "nope/x"), "no task 'nope/x'"),
        (("show", "nonsense"), "give a task id or AGENT/KEY"),
        (("submit", "nobody", "k"), "no agent named 'nobody'"),
        (("submit", "greet", "k", "--input", "{bad"), "--input is not valid JSON"),
        (("tasks", "--status", "sideways"), "sideways"),
    ],
)
def test_errors_are_one_clear_line(project: Path, args: tuple[str, ...], message: str) -> None:
    proc = tether(project, *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_discovery_errors_name_the_problem(project: Path) -> None:
    (project / "agents" / "cycle.py").write_text(textwrap.dedent(
        """
        import tether

        @tether.agent(subscribes="b.done", emits="a.done")
        def a(ctx): ...

        @tether.agent(subscribes="a.done", emits="b.done")
        def b(ctx): ...
        """
    ))
    proc = tether(project, "agents", check=False)
    assert proc.returncode == 1
    assert "cycle" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_config_is_reported(project: Path) -> None:
    env = env_for(project, TETHER_CONCURRENCY="many")
    proc = tether(project, "worker", "--until-idle", env=env, check=False)
    assert proc.returncode == 1
    assert "concurrency" in proc.stderr and "Traceback" not in proc.stderr


def test_db_upgrade_and_current(project: Path) -> None:
    from tether.store.migrate import HEAD

    first = tether(project, "db", "upgrade").stdout
    assert f"(empty) → {HEAD}" in first
    assert f"already at {HEAD}" in tether(project, "db", "upgrade").stdout
    current = json.loads(tether(project, "db", "current", "--json").stdout)
    assert current["revision"] == current["head"] == HEAD
    assert current["url"].endswith(".tether/tether.db")


def test_db_copy_moves_the_sqlite_store_to_postgresql(project: Path, pg_url: str) -> None:
    tether(project, "submit", "greet", "ada", "--input", '{"name": "Ada"}')
    tether(project, "worker", "--until-idle", "--quiet")
    counts = json.loads(tether(project, "db", "copy", "--to", pg_url, "--json").stdout)
    assert (counts["tasks"], counts["runs"], counts["triggers"]) == (2, 2, 1)
    env = env_for(project, TETHER_DATABASE_URL=pg_url)
    shown = json.loads(tether(project, "show", "log_greeting/ada", "--json", env=env).stdout)
    assert shown["runs"][0]["output"] == {"logged": "Hello, Ada!"}
    assert json.loads(tether(project, "verify", "--json", env=env).stdout)["ok"] is True
    again = tether(project, "db", "copy", "--to", pg_url, check=False)
    assert again.returncode == 1 and "not empty" in again.stderr
