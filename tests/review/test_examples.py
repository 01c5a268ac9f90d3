"""The example store: ctx.examples returns only neighbours at or above the bar, records
what each run was shown, coverage counts runs right; the default embedder is offline."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

import tether
from tether import Context, Project, WorkerStats
from tether.review import HashingEmbedder, ReviewError, add_example, record_review, shown_to
from tether.review.examples import coverage
from tether.store.schema import runs
from tether.store.schema_review import run_examples

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]


class Planted:
    """A test embedder whose vectors are planted: text ``"v:a,b"`` embeds to the unit vector
    (a, b, sqrt(1 - a² - b²)), so the cosine between two texts is known exactly."""

    name = "planted"
    dim = 3

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for t in texts:
            a, b = (float(x) for x in t.removeprefix("v:").split(","))
            out.append([a, b, max(0.0, 1 - a * a - b * b) ** 0.5])
        return np.array(out, dtype=np.float32)


SEEN: dict[str, list[tuple[int, float]]] = {}


@tether.agent(example_fields=("case",), example_threshold=0.8, embedder=Planted())
def decide(ctx: Context) -> dict[str, Any]:
    shown = ctx.examples(k=2)
    SEEN[ctx.key] = [(e.id, round(e.similarity, 4)) for e in shown]
    if shown:
        return shown[0].corrected_output
    return {"decision": "approve"}


@pytest.fixture
def project(make_project: MakeProject, store_url: str) -> Iterator[Project]:
    SEEN.clear()
    yield make_project([decide], database_url=store_url)


def test_only_neighbours_at_or_above_the_threshold_are_returned(
    project: Project, run_idle: RunIdle
) -> None:
    store = project.store
    # Query vector (1, 0, 0): an example at (s, 0, ...) has cosine exactly s with it.
    near = add_example(store, decide, input={"case": "v:0.95,0"}, reason="r1",
                       corrected_output={"decision": "decline"})
    edge = add_example(store, decide, input={"case": "v:0.8,0.6"}, reason="r2")
    below = add_example(store, decide, input={"case": "v:0.79,0.6"}, reason="r3")
    far = add_example(store, decide, input={"case": "v:0,1"}, reason="r4")
    assert len({near, edge, below, far}) == 4
    project.submit("decide", "hit", {"case": "v:1,0"})
    project.submit("decide", "miss", {"case": "v:0,0"})  # (0,0,1): nothing is close
    run_idle(project)

    assert SEEN["hit"] == [(near, 0.95), (edge, 0.8)]
    assert SEEN["miss"] == []
    hit_run = store.runs_of(store.get_task("decide/hit").id)[-1]
    assert hit_run.output == {"decision": "decline"}
    shown = shown_to(store, hit_run.id)
    assert [(e.id, round(e.similarity or 0, 4), e.reason) for e in shown] == [
        (near, 0.95, "r1"), (edge, 0.8, "r2")]
    with store.engine.connect() as conn:
        ranks = conn.execute(
            select(run_examples.c.example_id, run_examples.c.rank)
            .where(run_examples.c.run_id == hit_run.id).order_by(run_examples.c.rank)
        ).all()
    assert [tuple(r) for r in ranks] == [(near, 1), (edge, 2)]


def test_k_limits_and_new_examples_are_seen_by_the_next_run(
    project: Project, run_idle: RunIdle
) -> None:
    store = project.store
    ids = [add_example(store, decide, input={"case": f"v:{s},0"}) for s in (0.9, 0.99, 0.95)]
    project.submit("decide", "a", {"case": "v:1,0"})
    run_idle(project)
    assert [i for i, _ in SEEN["a"]] == [ids[1], ids[2]]  # k=2, best first
    newest = add_example(store, decide, input={"case": "v:1,0"})
    project.submit("decide", "b", {"case": "v:1,0"})
    run_idle(project)
    assert SEEN["b"][0] == (newest, 1.0)


def test_coverage_counts_runs_that_got_at_least_one_example(
    project: Project, run_idle: RunIdle
) -> None:
    store = project.store
    add_example(store, decide, input={"case": "v:1,0"})
    for i in range(3):
        project.submit("decide", f"near{i}", {"case": "v:0.99,0.1"})
    for i in range(5):
        project.submit("decide", f"far{i}", {"case": "v:0,1"})
    run_idle(project)
    c = coverage(store, "decide")
    assert (c.runs, c.covered, c.examples) == (8, 3, 1)
    assert c.share == pytest.approx(3 / 8)
    # Evaluation runs replay cases: they do not count toward production coverage.
    near0 = store.runs_of(store.get_task("decide/near0").id)[-1].id
    with store.engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.id == near0).values(reason="eval"))
    assert (coverage(store, "decide").runs, coverage(store, "decide").covered) == (7, 2)
    assert coverage(store, "nobody").to_dict() == {
        "agent": "nobody", "runs": 0, "covered": 0, "share": 0.0, "examples": 0}


def test_a_reviewed_failure_is_found_for_the_next_similar_case(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    got: dict[str, list[Any]] = {}

    @tether.agent(example_fields=("claim.description",), example_threshold=0.5)
    def claims(ctx: Context) -> dict[str, Any]:
        got[ctx.key] = [(e.corrected_output, e.reason) for e in ctx.examples(k=3)]
        return {"decision": "approve"}

    p = make_project([claims], database_url=store_url)
    p.submit("claims", "c1", {"claim": {"description": "burst pipe flooded the basement"}})
    run_idle(p)
    run_id = p.store.runs_of(p.store.get_task("claims/c1").id)[-1].id
    record_review(p.store, run_id, verdict="incorrect", reviewer="ana",
                  reason="gradual leaks are excluded", corrected_output={"decision": "decline"},
                  agent=claims)
    p.submit("claims", "c2", {"claim": {"description": "a burst pipe flooded our basement"}})
    p.submit("claims", "c3", {"claim": {"description": "stolen bicycle from the garage"}})
    run_idle(p)
    assert got == {"c1": [], "c2": [({"decision": "decline"}, "gradual leaks are excluded")],
                   "c3": []}


def test_a_missing_field_at_retrieval_fails_the_run_with_a_clear_reason(
    project: Project, run_idle: RunIdle
) -> None:
    project.submit("decide", "bad", {"other": 1})
    run_idle(project)
    run = project.store.runs_of(project.store.get_task("decide/bad").id)[-1]
    assert run.status == "failed"
    assert "example field 'case' is missing" in (run.failure_reason or "")


def test_add_example_refuses_absent_fields(project: Project) -> None:
    with pytest.raises(ReviewError, match="example field 'case' is missing"):
        add_example(project.store, decide, input={"nope": 1})


def test_the_hashing_embedder_works_with_the_network_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network is off")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    a, b = HashingEmbedder(), HashingEmbedder()
    texts = ["burst pipe flooded the basement", "a burst pipe flooded our basement",
             "stolen bicycle from the garage"]
    va, vb = a.embed(texts), b.embed(texts)
    assert va.shape == (3, a.dim) and va.dtype == np.float32
    assert np.array_equal(va, vb)  # stable: nothing fitted, nothing downloaded
    assert np.allclose(np.linalg.norm(va, axis=1), 1.0, atol=1e-5)
    assert va[0] @ va[1] > 0.6 > 0.2 > abs(float(va[0] @ va[2]))


def test_the_hashing_embedder_matches_scikit_learns_transform() -> None:
    e = HashingEmbedder()
    texts = ["Burst pipe, kitchen flooded!", "Stolen bicycle — garage", "x", ""]
    fast = e.embed(texts)
    assert np.allclose(fast, e.reference(texts), atol=1e-6)
    assert not fast[3].any()  # empty text: the zero vector, similar to nothing
