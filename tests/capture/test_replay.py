"""Replay: an agent re-run offline against its recorded world reproduces its output;
unrecorded requests are errors that name them; nothing is written to the store."""

from __future__ import annotations

import random
from collections.abc import Callable

import httpx
import pytest
import requests
from sqlalchemy import func, select

import tether
from tests.capture.world import World
from tether import Context, Project, WorkerStats
from tether.capture import ReplayError, replay
from tether.store.schema import runs, steps
from tether.store.schema_capture import http_exchanges

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]


def _pricer(world: World) -> tether.Agent:
    @tether.agent
    def pricer(ctx: Context) -> object:
        with httpx.Client() as client:
            with ctx.step("read price"):
                price = client.get(f"{world.url}/price", params={"case": ctx.key}).json()
            with ctx.step("quote", key=f"quote-{ctx.key}"):  # keyed: written as started
                quote = client.post(f"{world.url}/quote", json={"price": price["price"]}).json()
        with ctx.step("risk"):
            risk = requests.get(f"{world.url}/gzip", timeout=5).json()
        return {"price": price["price"], "quote": quote["total"], "zipped": risk["zipped"]}

    return pricer


def _counts(project: Project) -> tuple[int, int, int]:
    with project.store.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (runs, steps, http_exchanges)
        )


def test_replay_reproduces_the_output_offline_after_the_world_moved(
    make_project: MakeProject, run_idle: RunIdle, world: World, store_url: str
) -> None:
    world.set_json("/price", {"price": 100})
    world.set_json("/quote", {"total": 110})
    project = make_project([_pricer(world)], database_url=store_url)
    sub = project.submit("pricer", "case-1")
    run_idle(project)
    [run] = project.store.runs_of(sub.task_id)
    assert run.output == {"price": 100, "quote": 110, "zipped": True}

    world.set_json("/price", {"price": 999})  # the world moved
    hits, before = len(world.hits), _counts(project)
    result = replay(project, run.id)

    assert result.matches, result.diff
    assert result.output == run.output
    assert len(world.hits) == hits  # no request reached the network
    assert _counts(project) == before  # nothing written
    assert result.answered == [1, 2, 3] and result.unused == [] and result.unrecorded == []
    assert result.steps == result.original_steps == ["read price", "quote", "risk"]


def test_a_request_the_run_never_made_is_an_error_naming_it(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    world.set_json("/price", {"price": 100})
    calls = {"n": 0}

    @tether.agent(max_attempts=1)
    def drifting(ctx: Context) -> object:
        calls["n"] += 1
        path = "/price" if calls["n"] == 1 else "/price-v2"  # new code, new request
        return httpx.get(f"{world.url}{path}").json()

    project = make_project([drifting])
    sub = project.submit("drifting", "k")
    run_idle(project)
    [run] = project.store.runs_of(sub.task_id)

    result = replay(project, run.id)

    assert not result.matches
    assert result.unrecorded == [f"GET {world.url}/price-v2"]
    assert result.error is not None and f"GET {world.url}/price-v2" in result.error
    assert "was not made by the original run" in result.error
    assert result.unused == [1]


def test_the_replay_error_reaches_an_agent_that_does_not_catch_it(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    from tether.capture.blobs import LocalBlobs
    from tether.capture.config import CaptureConfig
    from tether.capture.recorder import RunCapture, activate
    from tether.capture.replayer import World as RecordedWorld

    cap = RunCapture(None, 1, 1, config=CaptureConfig(),
                     world=RecordedWorld(1, [], LocalBlobs("/nonexistent"), CaptureConfig()))
    with activate(cap), pytest.raises(ReplayError, match=r"POST http://example.invalid/x"):
        httpx.post("http://example.invalid/x", json={})


def test_a_nondeterministic_agent_is_reported_with_a_diff(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    world.set_json("/price", {"price": 100})

    @tether.agent
    def noisy(ctx: Context) -> object:
        price = httpx.get(f"{world.url}/price").json()["price"]
        return {"price": price, "pick": random.random()}

    project = make_project([noisy])
    sub = project.submit("noisy", "k")
    run_idle(project)
    [run] = project.store.runs_of(sub.task_id)

    result = replay(project, run.id)

    assert not result.matches and result.error is None
    assert '"pick"' in result.diff and result.diff.startswith("--- original")


def test_async_agents_replay_and_repeated_requests_reuse_the_last_answer(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    world.set_json("/n", {"n": 1})
    polls = {"n": 2}

    @tether.agent
    async def poller(ctx: Context) -> object:
        async with httpx.AsyncClient() as client:
            seen = [(await client.get(f"{world.url}/n")).json()["n"] for _ in range(polls["n"])]
        return seen[-1]

    project = make_project([poller])
    sub = project.submit("poller", "k")
    run_idle(project)
    [run] = project.store.runs_of(sub.task_id)
    polls["n"] = 3

    result = replay(project, run.id)

    assert result.matches and result.repeated == 1 and result.answered == [1, 2, 2]


def test_a_failed_run_replays_to_the_same_failure(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    world.set_json("/price", {"error": "bad case"}, status=422)

    @tether.agent(max_attempts=1)
    def strict(ctx: Context) -> object:
        httpx.get(f"{world.url}/price").raise_for_status()
        return "never"

    project = make_project([strict])
    sub = project.submit("strict", "k")
    run_idle(project)
    [run] = project.store.runs_of(sub.task_id)
    assert run.status == "failed"

    result = replay(project, run.id)

    assert result.matches and result.error is not None and "422" in result.error
