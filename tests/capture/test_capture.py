"""Capture of real HTTP exchanges (httpx sync/async/streaming, requests, the openai SDK)
made by agents run by a real worker against a local API; bodies in the blob store."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import requests

import tether
from tests.capture.world import STREAM_CHUNKS, STREAM_PAUSE, World
from tether import Context, Project, WorkerStats
from tether.capture import body, exchanges
from tether.capture.blobs import EMPTY_SHA256
from tether.store import RunStatus

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]


def _blob_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp"))


def _one_run(project: Project, run_idle: RunIdle, agent: str, key: str = "k") -> int:
    sub = project.submit(agent, key)
    run_idle(project)
    [run] = project.store.runs_of(sub.task_id)
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    return run.id


def test_sync_httpx_exchanges_are_recorded_with_run_step_and_body(
    make_project: MakeProject, run_idle: RunIdle, world: World, store_url: str
) -> None:
    world.set_json("/price", {"price": 100})

    @tether.agent
    def pricer(ctx: Context) -> object:
        with httpx.Client() as client:
            client.get(f"{world.url}/missing")  # before any step
            with ctx.step("read price"):
                price = client.get(f"{world.url}/price", params={"b": "2", "a": "1"}).json()
        return price

    project = make_project([pricer], database_url=store_url)
    run_id = _one_run(project, run_idle, "pricer")

    first, second = exchanges(project.store, run_id)
    assert (first.seq, first.step, first.status, first.library) == (1, None, 404, "httpx")
    assert (second.seq, second.step, second.status) == (2, 1, 200)
    assert second.method == "GET"
    assert second.url == f"{world.url}/price?b=2&a=1"
    assert second.response_body == "stored"
    assert json.loads(body(project.store, second.response_sha256)) == {"price": 100}
    assert ("content-type", "application/json") in {
        (k.lower(), v) for k, v in second.response_headers
    }
    assert second.elapsed is not None and second.elapsed > 0
    assert second.started_at <= time.time()
    assert body(project.store, first.response_sha256) == b"not found"


def test_requests_exchanges_are_recorded(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    world.set_json("/risk", {"score": 0.2})

    @tether.agent
    def scorer(ctx: Context) -> object:
        with ctx.step("score"):
            resp = requests.post(f"{world.url}/risk", json={"case": "c-1"}, timeout=5)
        return resp.json()

    project = make_project([scorer])
    run_id = _one_run(project, run_idle, "scorer")

    [ex] = exchanges(project.store, run_id)
    assert (ex.library, ex.method, ex.status, ex.step) == ("requests", "POST", 200, 1)
    assert json.loads(body(project.store, ex.request_sha256)) == {"case": "c-1"}
    assert json.loads(body(project.store, ex.response_sha256)) == {"score": 0.2}


def test_async_agent_exchanges_are_recorded(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    world.set_json("/a", {"v": "a"})
    world.set_json("/b", {"v": "b"})

    @tether.agent
    async def gatherer(ctx: Context) -> object:
        async with httpx.AsyncClient() as client, ctx.step("fetch both"):
            a, b = await asyncio.gather(
                client.get(f"{world.url}/a"), client.get(f"{world.url}/b")
            )
        return [a.json()["v"], b.json()["v"]]

    project = make_project([gatherer])
    run_id = _one_run(project, run_idle, "gatherer")

    found = exchanges(project.store, run_id)
    assert sorted(e.url.rsplit("/", 1)[1] for e in found) == ["a", "b"]
    assert [e.seq for e in found] == [1, 2]
    assert {e.step for e in found} == {1}
    assert sorted(json.loads(body(project.store, e.response_sha256))["v"] for e in found) == [
        "a", "b"]


def test_a_streaming_response_still_streams_and_is_recorded_whole(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    arrivals: list[float] = []

    @tether.agent
    def streamer(ctx: Context) -> object:
        start = time.perf_counter()
        text = b""
        with httpx.Client() as client, client.stream("GET", f"{world.url}/stream") as resp:
            for chunk in resp.iter_raw():
                arrivals.append(time.perf_counter() - start)
                text += chunk
        return text.decode()

    project = make_project([streamer])
    run_id = _one_run(project, run_idle, "streamer")

    # The first chunk reached the agent long before the server finished sending.
    total = STREAM_CHUNKS * STREAM_PAUSE
    assert arrivals[0] < total / 2
    assert arrivals[-1] >= total - STREAM_PAUSE * 1.5
    [ex] = exchanges(project.store, run_id)
    expected = "".join(f"chunk {i}\n" for i in range(STREAM_CHUNKS)).encode()
    assert body(project.store, ex.response_sha256) == expected
    assert ex.response_size == len(expected)


def test_async_streaming_response_streams(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    arrivals: list[float] = []

    @tether.agent
    async def astreamer(ctx: Context) -> object:
        start = time.perf_counter()
        async with httpx.AsyncClient() as client, client.stream(
            "GET", f"{world.url}/stream"
        ) as resp:
            async for _line in resp.aiter_lines():
                arrivals.append(time.perf_counter() - start)
        return len(arrivals)

    project = make_project([astreamer])
    run_id = _one_run(project, run_idle, "astreamer")

    assert arrivals[0] < STREAM_CHUNKS * STREAM_PAUSE / 2
    [ex] = exchanges(project.store, run_id)
    assert body(project.store, ex.response_sha256).count(b"chunk") == STREAM_CHUNKS


def test_the_openai_sdk_is_captured(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    import openai

    @tether.agent
    def decider(ctx: Context) -> object:
        client = openai.OpenAI(api_key="sk-test-openai-key-123456", base_url=f"{world.url}/v1",
                               max_retries=0)
        with ctx.step("ask the model"):
            answer = client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "approve?"}],
                max_tokens=5,
            )
        return answer.choices[0].message.content

    project = make_project([decider])
    run_id = _one_run(project, run_idle, "decider")

    [ex] = exchanges(project.store, run_id)
    assert ex.method == "POST" and ex.url == f"{world.url}/v1/chat/completions"
    assert ex.library in ("httpx", "httpx2")
    assert ex.step == 1 and ex.status == 200
    sent = json.loads(body(project.store, ex.request_sha256))
    assert sent["model"] == "gpt-test" and sent["max_tokens"] == 5  # not taken for a secret
    assert dict((k.lower(), v) for k, v in ex.request_headers)["authorization"] == "[REDACTED]"
    got = json.loads(body(project.store, ex.response_sha256))
    assert got["choices"][0]["message"]["content"] == "approve"


def test_identical_bodies_are_stored_once(
    make_project: MakeProject, run_idle: RunIdle, world: World, tmp_path: Path
) -> None:
    world.set_json("/same", {"answer": 42})

    @tether.agent
    def twice(ctx: Context) -> object:
        for _ in range(3):
            httpx.get(f"{world.url}/same")
        return httpx.get(f"{world.url}/bytes/5").status_code

    project = make_project([twice])
    run_a = _one_run(project, run_idle, "twice", "a")
    run_b = _one_run(project, run_idle, "twice", "b")

    rows = exchanges(project.store, run_a) + exchanges(project.store, run_b)
    assert len(rows) == 8
    assert len({e.response_sha256 for e in rows}) == 2
    files = _blob_files(tmp_path / ".tether" / "blobs")
    assert sorted(f.read_bytes() for f in files) == sorted([b'{"answer": 42}', b"xxxxx"])


def test_a_gzip_body_is_stored_decoded_and_marked(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    @tether.agent
    def zipped(ctx: Context) -> object:
        a = httpx.get(f"{world.url}/gzip").json()
        b = requests.get(f"{world.url}/gzip", timeout=5).json()
        return [a, b]

    project = make_project([zipped])
    run_id = _one_run(project, run_idle, "zipped")

    for ex in exchanges(project.store, run_id):
        assert ex.response_encoding == "gzip"
        assert json.loads(body(project.store, ex.response_sha256)) == {"zipped": True}
        assert ex.response_size == len(gzip.compress(b'{"zipped": true}')) or ex.library == (
            "requests")


def test_a_body_over_the_cap_is_hashed_and_marked_not_stored(
    make_project: MakeProject, run_idle: RunIdle, world: World, tmp_path: Path
) -> None:
    @tether.agent
    def big(ctx: Context) -> object:
        return len(httpx.get(f"{world.url}/bytes/5000").content)

    project = make_project([big], capture_max_body=1000)
    run_id = _one_run(project, run_idle, "big")

    [ex] = exchanges(project.store, run_id)
    assert ex.response_body == "over_cap"
    assert ex.response_size == 5000
    assert ex.note is not None and "over the 1000-byte cap" in ex.note
    import hashlib

    assert ex.response_sha256 == hashlib.sha256(b"x" * 5000).hexdigest()
    assert _blob_files(tmp_path / ".tether" / "blobs") == []
    with pytest.raises(tether.NotFound):
        body(project.store, ex.response_sha256)


def test_a_failed_request_is_recorded_with_its_error(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    @tether.agent(max_attempts=1)
    def refused(ctx: Context) -> object:
        return httpx.get(f"http://127.0.0.1:{port}/x").status_code

    project = make_project([refused])
    sub = project.submit("refused", "k")
    run_idle(project)
    [run] = project.store.runs_of(sub.task_id)
    [ex] = exchanges(project.store, run.id)
    assert ex.status is None and ex.response_body == "none"
    assert ex.error is not None and "ConnectError" in ex.error


def test_empty_bodies_need_no_blob(
    make_project: MakeProject, run_idle: RunIdle, world: World, tmp_path: Path
) -> None:
    world.answers["/empty"] = (204, {}, b"")

    @tether.agent
    def empty(ctx: Context) -> object:
        return httpx.delete(f"{world.url}/empty").status_code

    project = make_project([empty])
    [ex] = exchanges(project.store, _one_run(project, run_idle, "empty"))
    assert (ex.status, ex.response_body, ex.response_sha256) == (204, "empty", EMPTY_SHA256)
    assert (ex.request_body, ex.request_sha256) == ("empty", None)
    assert body(project.store, ex.response_sha256) == b""


def test_outside_a_run_nothing_is_captured_and_calls_pass_through(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    world.set_json("/x", {"ok": True})

    @tether.agent
    def noop(ctx: Context) -> object:
        return None

    project = make_project([noop])
    run_id = _one_run(project, run_idle, "noop")  # installs the patches
    assert httpx.get(f"{world.url}/x").json() == {"ok": True}
    assert requests.get(f"{world.url}/x", timeout=5).json() == {"ok": True}
    assert exchanges(project.store, run_id) == []


def test_capture_can_be_turned_off(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    @tether.agent
    def quiet(ctx: Context) -> object:
        return httpx.get(f"{world.url}/bytes/3").text

    project = make_project([quiet], capture=False)
    assert exchanges(project.store, _one_run(project, run_idle, "quiet")) == []


def test_blobs_can_live_in_an_fsspec_store(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    import fsspec

    world.set_json("/doc", {"doc": 1})

    @tether.agent
    def reader(ctx: Context) -> object:
        return httpx.get(f"{world.url}/doc").json()

    project = make_project([reader], capture_blobs="memory://tether-test-blobs")
    [ex] = exchanges(project.store, _one_run(project, run_idle, "reader"))
    fs = fsspec.filesystem("memory")
    sha = ex.response_sha256
    assert sha is not None
    assert fs.cat_file(f"/tether-test-blobs/{sha[:2]}/{sha[2:]}") == b'{"doc": 1}'
    assert json.loads(body(project.store, sha)) == {"doc": 1}


def test_a_response_the_agent_never_closes_is_still_recorded_and_marked(
    make_project: MakeProject, run_idle: RunIdle, world: World
) -> None:
    @tether.agent
    def leaker(ctx: Context) -> object:
        client = httpx.Client()
        resp = client.send(client.build_request("GET", f"{world.url}/stream"), stream=True)
        first = next(resp.iter_raw())
        return first.decode()  # returns with the response still open

    project = make_project([leaker])
    [ex] = exchanges(project.store, _one_run(project, run_idle, "leaker"))
    assert ex.response_body == "partial" and ex.response_sha256 is None
    assert ex.note is not None and "stopped reading the response after" in ex.note


def test_blob_locations_follow_the_settings(tmp_path: Path) -> None:
    from tether.capture import CaptureConfig
    from tether.config import load_settings

    default = CaptureConfig.from_settings(load_settings(tmp_path))
    assert default.blobs == str(tmp_path / ".tether" / "blobs")
    relative = CaptureConfig.from_settings(load_settings(tmp_path, capture_blobs="bodies"))
    assert relative.blobs == str(tmp_path / "bodies")
    remote = CaptureConfig.from_settings(load_settings(tmp_path, capture_blobs="s3://b/p"))
    assert remote.blobs == "s3://b/p"
    pg = CaptureConfig.from_settings(
        load_settings(tmp_path, database_url="postgresql://u@h/db"))
    assert pg.blobs == str(tmp_path / ".tether" / "blobs")
    (tmp_path / "tether.toml").write_text('capture_redact_fields = ["ssn"]\ncapture = false\n')
    from_file = CaptureConfig.from_settings(load_settings(tmp_path))
    assert from_file.redact_fields == ("ssn",) and from_file.enabled is False
