"""OpenTelemetry export: a run, its steps and its exchanges as nested spans."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import tether
from tests.capture.world import World
from tether import Context, Project, WorkerStats
from tether.capture import otel

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]


def test_runs_steps_and_exchanges_become_nested_spans(
    make_project: MakeProject, world: World
) -> None:
    world.set_json("/score", {"score": 7})
    world.answers["/down"] = (503, {}, b"busy")

    @tether.agent(max_attempts=1)
    def scorer(ctx: Context) -> object:
        with ctx.step("score"):
            score = httpx.get(f"{world.url}/score").json()["score"]
        httpx.get(f"{world.url}/down")
        return score

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    project = make_project([scorer])
    project.submit("scorer", "k")
    project.worker(poll_interval=0.01, on_complete=otel.listener(
        project.store, tracer_provider=provider)).run(until_idle=True)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"tether.run scorer", "tether.step score", "GET"}
    assert len(exporter.get_finished_spans()) == 4
    by_kind = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert len(by_kind) == 2
    run = spans["tether.run scorer"]
    step = spans["tether.step score"]
    assert run.attributes is not None and run.attributes["tether.task"] == "scorer/k"
    assert step.parent is not None and step.parent.span_id == run.context.span_id
    score_call = next(s for s in by_kind if s.attributes and
                      s.attributes["url.full"].endswith("/score"))
    down_call = next(s for s in by_kind if s is not score_call)
    assert score_call.parent is not None and score_call.parent.span_id == step.context.span_id
    assert down_call.parent is not None and down_call.parent.span_id == run.context.span_id
    assert score_call.attributes is not None
    assert score_call.attributes["http.response.status_code"] == 200
    assert down_call.status.status_code == StatusCode.ERROR
    assert run.start_time is not None and score_call.start_time is not None
    assert run.start_time <= score_call.start_time
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {run.context.trace_id}
