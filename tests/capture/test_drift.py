"""Drift: exactly the requests whose answers changed are flagged, with a JSON-aware diff;
and the `tether drift` / `tether replay` / `tether capture` commands end to end."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx

import tether
from tests.capture.world import World
from tests.process.helpers import env_for
from tests.process.helpers import tether as run_tether
from tether import Context, Project, WorkerStats
from tether.capture import drift

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]


def _checker(world: World) -> tether.Agent:
    @tether.agent
    def checker(ctx: Context) -> object:
        with httpx.Client(base_url=world.url) as client:
            rate = client.get("/rate", params={"ccy": "EUR"}).json()
            again = client.get("/rate", params={"ccy": "EUR"}).json()
            limits = client.post("/limits", json={"b": 2, "a": 1}).json()
            stable = client.get("/stable").json()
        return {"rate": again["rate"], "first": rate["rate"], "limit": limits["max"],
                "s": stable}

    return checker


def test_drift_flags_exactly_the_requests_whose_answers_changed(
    make_project: MakeProject, run_idle: RunIdle, world: World, store_url: str
) -> None:
    world.set_json("/rate", {"rate": 1.10, "source": "ecb"})
    world.set_json("/limits", {"max": 5000})
    world.set_json("/stable", {"ok": True})
    project = make_project([_checker(world)], database_url=store_url)
    project.submit("checker", "acct-1", {"n": 1})
    run_idle(project)
    world.set_json("/limits", {"max": 7500})  # moves between runs
    project.submit("checker", "acct-1", {"n": 2})
    run_idle(project)

    found = drift(project.store, "checker/acct-1")

    assert [(d.method, d.url.split("?")[0].rsplit("/", 1)[1]) for d in found] == [
        ("POST", "limits")]
    [d] = found
    assert (d.calls, d.answers, len(d.changes)) == (2, 2, 1)
    [change] = d.changes
    assert change.across_runs and change.before.run_id != change.after.run_id
    assert '-  "max": 5000' in change.diff and '+  "max": 7500' in change.diff


def test_a_change_within_one_run_is_flagged_as_such(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    answers = iter([{"n": 1}, {"n": 2}])

    @tether.agent
    def twice(ctx: Context) -> object:
        out = []
        for _ in range(2):
            world.set_json("/counter", next(answers))
            out.append(httpx.get(f"{world.url}/counter").json()["n"])
        return out

    project = make_project([twice])
    project.submit("twice", "k")
    run_idle(project)

    [d] = drift(project.store, "twice/k")
    [change] = d.changes
    assert not change.across_runs and (change.before.seq, change.after.seq) == (1, 2)


def test_ignored_fields_are_not_drift(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    stamps = iter(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"])

    @tether.agent
    def stamped(ctx: Context) -> object:
        world.set_json("/doc", {"v": 1, "generated_at": next(stamps)})
        return httpx.get(f"{world.url}/doc", params={"nonce": ctx.input}).json()["v"]

    project = make_project([stamped], capture_ignore_fields=["generated_at"],
                           capture_ignore_query=["nonce"])
    project.submit("stamped", "k", 1)
    run_idle(project)
    project.submit("stamped", "k", 2)
    run_idle(project)
    assert drift(project.store, "stamped/k") == []

    plain = make_project([stamped], project_dir=project.settings.project_dir / "plain",
                         capture_ignore_query=["nonce"])
    stamps = iter(["a", "b"])
    plain.submit("stamped", "k", 1)
    run_idle(plain)
    plain.submit("stamped", "k", 2)
    run_idle(plain)
    [d] = drift(plain.store, "stamped/k")
    assert '"generated_at"' in d.changes[0].diff


ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "world_capture.py"


def test_the_guide_shows_the_example_verbatim() -> None:
    assert EXAMPLE.read_text() in (ROOT / "docs" / "capture.md").read_text()


def test_the_guide_walkthrough_end_to_end(tmp_path: Path, world: World) -> None:
    """docs/capture.md, command by command: capture, drift, replay, prune."""
    (tmp_path / "agents").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "agents" / "world_capture.py")
    token = "prod-5ecret-token-9876"
    env = env_for(tmp_path, PRICING_API=world.url, PRICING_TOKEN=token)
    world.set_json("/price", {"amount": 1000})
    world.set_json("/risk", {"loading": 0.1})
    run_tether(tmp_path, "submit", "quote", "case-7", "--input", "1", env=env)
    run_tether(tmp_path, "worker", "--until-idle", "--json", env=env)
    world.set_json("/risk", {"loading": 0.25})  # the world moves
    run_tether(tmp_path, "submit", "quote", "case-7", "--input", "2", env=env)
    run_tether(tmp_path, "worker", "--until-idle", "--json", env=env)

    shown = json.loads(run_tether(tmp_path, "show", "quote/case-7", "--json", env=env).stdout)
    first, second = (r["id"] for r in shown["runs"])
    assert [r["output"] for r in shown["runs"]] == [{"premium": 1100.0}, {"premium": 1250.0}]
    listed = json.loads(run_tether(tmp_path, "capture", "exchanges", str(first), "--json",
                                   env=env).stdout)
    assert [(e["method"], e["status"], e["step"]) for e in listed] == [
        ("GET", 200, 1), ("POST", 200, 2)]
    raw = run_tether(tmp_path, "capture", "body", listed[1]["response_sha256"], env=env)
    assert json.loads(raw.stdout) == {"loading": 0.1}
    human = run_tether(tmp_path, "capture", "exchanges", str(first), env=env).stdout
    assert "price" in human and "stored" in human and "POST" in human

    drifted = json.loads(run_tether(tmp_path, "drift", "quote/case-7", "--json", env=env).stdout)
    assert [(d["method"], d["url"], len(d["changes"])) for d in drifted] == [
        ("POST", f"{world.url}/risk", 1)]
    assert '+  "loading": 0.25' in drifted[0]["changes"][0]["diff"]
    assert "1 changes (1 between runs" in run_tether(tmp_path, "drift", "quote/case-7",
                                                     env=env).stdout

    world.answers.clear()  # the API no longer answers: replay must not need it
    hits = len(world.hits)
    replayed = json.loads(run_tether(tmp_path, "replay", str(first), "--json", env=env).stdout)
    assert replayed["matches"] is True and replayed["output"] == {"premium": 1100.0}
    assert "matches" in run_tether(tmp_path, "replay", "quote/case-7", env=env).stdout  # last
    assert f"replay of run {second}" in run_tether(tmp_path, "replay", "quote/case-7",
                                                   env=env).stdout
    assert len(world.hits) == hits

    pruned = json.loads(run_tether(tmp_path, "capture", "prune", "--older-than", "0s",
                                   "--json", env=env).stdout)
    assert pruned["exchanges"] == 4 and pruned["bodies_deleted"] == 4
    after = run_tether(tmp_path, "replay", str(first), env=env, check=False)
    assert after.returncode == 1 and "pruned" in after.stdout
    # No secret in anything the project wrote.
    for p in (tmp_path / ".tether").rglob("*"):
        if p.is_file():
            assert token.encode() not in p.read_bytes(), p
