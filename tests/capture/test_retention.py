"""Retention: old bodies are deleted, their rows stay and say so; young bodies stay."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

import tether
from tests.capture.world import World
from tether import Context, Project, WorkerStats
from tether.capture import body, config_for, drift, exchanges, replay
from tether.capture.retention import parse_age, prune
from tether.store.schema_capture import http_exchanges

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]


def test_prune_deletes_old_bodies_and_marks_their_rows(
    make_project: MakeProject, run_idle: RunIdle, world: World, store_url: str
) -> None:
    world.set_json("/old", {"v": "old only"})
    world.set_json("/shared", {"v": "shared"})

    @tether.agent
    def reader(ctx: Context) -> object:
        return httpx.get(f"{world.url}/{ctx.input}").json()["v"]

    project = make_project([reader], database_url=store_url)
    for key, path in [("a", "old"), ("b", "shared")]:
        project.submit("reader", key, path)
    run_idle(project)
    # Age the first two runs by 40 days, then a young run reads /shared again.
    with project.store.engine.begin() as conn:
        conn.execute(update(http_exchanges).values(
            started_at=http_exchanges.c.started_at - 40 * 86400))
    project.submit("reader", "c", "shared")
    run_idle(project)
    blob_root = Path(config_for(project.store).blobs)
    assert len([p for p in blob_root.rglob("*") if p.is_file()]) == 2

    dry = prune(project.store, "30d", dry_run=True)
    assert (dry.exchanges, dry.bodies_deleted, dry.bodies_kept) == (2, 1, 1)
    assert len([p for p in blob_root.rglob("*") if p.is_file()]) == 2

    result = prune(project.store, "30d")

    assert (result.exchanges, result.bodies_deleted, result.bodies_kept) == (2, 1, 1)
    files = [p for p in blob_root.rglob("*") if p.is_file()]
    assert [json.loads(p.read_bytes()) for p in files] == [{"v": "shared"}]
    runs = {t: project.store.runs_of(project.store.get_task(f"reader/{t}").id)[0].id
            for t in "abc"}
    [old] = exchanges(project.store, runs["a"])
    assert old.response_body == "pruned" and old.response_sha256 is not None
    assert old.note is not None and "bodies pruned at" in old.note
    with pytest.raises(tether.NotFound):
        body(project.store, old.response_sha256)
    [young] = exchanges(project.store, runs["c"])
    assert young.response_body == "stored"
    assert json.loads(body(project.store, young.response_sha256)) == {"v": "shared"}
    # A pruned run cannot be replayed, and says why; drift still sees the old hashes.
    result_a = replay(project, runs["a"])
    assert not result_a.matches and result_a.error and "pruned" in result_a.error
    assert drift(project.store, "reader/a") == []
    assert prune(project.store, "30d").exchanges == 0  # nothing left to do


def test_ages() -> None:
    assert parse_age("30d") == 30 * 86400 and parse_age("12h") == 43200
    assert parse_age("2w") == 14 * 86400 and parse_age("90m") == 5400
    with pytest.raises(tether.ConfigError, match="30d, 12h"):
        parse_age("thirty days")
