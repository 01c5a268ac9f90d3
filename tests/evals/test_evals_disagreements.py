"""Disagreement classification, and re-running disagreeing cases at once."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import tether
from tether import Store, capture
from tether.evals import save_dataset
from tether.evals.disagreements import (
    classify_disagreement,
    disagrees,
    exchanges_of,
    triage,
)
from tether.evals.experiments import results
from tether.evals.models import Case, Dataset, LabelObservation
from tether.evals.runner import ExperimentRunner, start
from tether.graph.registry import build

A = ("GET https://api/x", "sha-a")
B = ("GET https://api/y", "sha-b")


@pytest.mark.parametrize(
    ("first", "second", "d1", "d2", "expected"),
    [
        # Same request, another answer: the world moved (whatever the decisions).
        ([A, B], [A, ("GET https://api/y", "sha-B2")], "fraud", "legit", "world_moved"),
        ([A, B], [A, ("GET https://api/y", "sha-B2")], "fraud", "fraud", "world_moved"),
        # Same answers, another decision: nondeterministic.
        ([A, B], [A, B], "fraud", "legit", "agent_nondeterministic"),
        ([A, B], [B, A], {"x": 1}, {"x": 2}, "agent_nondeterministic"),
        # Same answers, same decision: wrong.
        ([A, B], [A, B], "fraud", "fraud", "agent_wrong"),
        ([A, B], [B, A], {"x": 1, "y": 2}, {"y": 2, "x": 1}, "agent_wrong"),
        ([], [], "fraud", "fraud", "agent_wrong"),
        # Repeated requests are matched in order: the second answer changed.
        (
            [A, ("GET https://api/x", "sha-1")],
            [A, ("GET https://api/x", "sha-2")],
            1,
            1,
            "world_moved",
        ),
        # An extra request in one run does not by itself mean the world moved.
        ([A], [A, B], "fraud", "fraud", "agent_wrong"),
        ([A], [A, B], "fraud", "legit", "agent_nondeterministic"),
    ],
)
def test_classify(
    first: list[tuple[str, str]], second: list[tuple[str, str]], d1: Any, d2: Any, expected: str
) -> None:
    assert classify_disagreement(first, second, d1, d2) == expected


def test_disagreeing_cases_are_rerun_at_once_and_triaged(store: Store) -> None:
    calls: list[tuple[str, int]] = []
    world = {"k1": ["sha-1", "sha-1b"], "k2": ["sha-2", "sha-2"], "k3": ["sha-3", "sha-3"]}
    answers = {"k1": [True, True], "k2": [True, False], "k3": [True, True]}

    @tether.agent
    def agent(ctx: tether.Context) -> dict[str, Any]:
        key = ctx.input["key"]
        n = sum(1 for k, _ in calls if k == key)
        calls.append((key, ctx.run_id))
        return {"decision": answers[key][n] if key in answers else False}

    ds = Dataset(
        name="d",
        cases=tuple(
            Case(k, {"key": k}, 0.0, (LabelObservation(False, 1.0),))
            for k in ("k0", "k1", "k2", "k3", "k4")
        ),
    )
    ds = save_dataset(store, ds)
    graph = build([agent])
    exp, _ = start(store, graph, ds, "agent", name="e")
    stats = ExperimentRunner(store, graph, exp, ds, concurrency=1).run(rerun_if=disagrees(ds))
    assert stats.reruns == 3 and stats.ran == 5
    # Front-loaded: each disagreeing case's re-run comes before the next new case.
    order = [k for k, _ in calls]
    assert order == ["k0", "k1", "k1", "k2", "k2", "k3", "k3", "k4"]

    runs = {}
    for kind in ("first", "rerun"):
        for r in results(store, exp.id, kind=kind):
            runs[r.run_id] = (r.case_key, kind)

    def fake_exchanges(_store: Store, run_id: int) -> list[tuple[str, str]]:
        key, kind = runs[run_id]
        return [("GET https://api/" + key, world[key][kind == "rerun"])]

    rows = triage(
        store,
        results(store, exp.id),
        results(store, exp.id, kind="rerun"),
        exchanges=fake_exchanges,
    )
    assert {r["key"]: r["classification"] for r in rows} == {
        "k1": "world_moved",
        "k2": "agent_nondeterministic",
        "k3": "agent_wrong",
    }


class _MovingWorld(BaseHTTPRequestHandler):
    """``GET /case/<key>``: ``moved`` says fraud on its first call and legit after (the
    world moved); every other key always gets the same answer."""

    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        key = self.path.rsplit("/", 1)[1]
        n = self.hits[key] = self.hits.get(key, 0) + 1
        fraud = n == 1 if key == "moved" else key == "wrong"
        body = json.dumps({"key": key, "fraud": fraud}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_disagreements_are_classified_from_captured_exchanges(
    store: Store, tmp_path: Path
) -> None:
    """End to end with world capture: an agent asks a real local API about each case; the
    disagreeing cases are re-run at once and classified from the recorded exchanges."""
    _MovingWorld.hits = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MovingWorld)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    capture.attach(store, capture.CaptureConfig(blobs=str(tmp_path / "blobs")))
    flips = iter([True, False])

    @tether.agent
    def checker(ctx: tether.Context) -> dict[str, Any]:
        key = ctx.input["key"]
        answer = httpx.get(f"{base}/case/{key}").json()
        # "nondet" ignores the (stable) answer and flips its decision between runs.
        return {"decision": next(flips) if key == "nondet" else answer["fraud"]}

    try:
        ds = save_dataset(
            store,
            Dataset(
                name="world",
                cases=tuple(
                    Case(k, {"key": k}, 0.0, (LabelObservation(False, 1.0),))
                    for k in ("ok", "moved", "nondet", "wrong")
                ),
            ),
        )
        graph = build([checker])
        exp, _ = start(store, graph, ds, "checker", name="world-e")
        stats = ExperimentRunner(store, graph, exp, ds, concurrency=1).run(rerun_if=disagrees(ds))
        assert stats.reruns == 3
        first = results(store, exp.id)
        assert all(len(exchanges_of(store, r.run_id)) == 1 for r in first)
        rows = triage(store, first, results(store, exp.id, kind="rerun"))
    finally:
        server.shutdown()
        server.server_close()
    assert {r["key"]: r["classification"] for r in rows} == {
        "moved": "world_moved",
        "nondet": "agent_nondeterministic",
        "wrong": "agent_wrong",
    }
