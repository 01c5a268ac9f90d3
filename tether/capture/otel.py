"""OpenTelemetry export (the ``otel`` extra): runs, their steps and their HTTP exchanges
as spans, so Tether shows up in the tracing a team already uses.

One trace per run: a ``tether.run`` span, a child span per step, and a CLIENT span per
HTTP exchange under the step it was made in (or under the run). Times are the recorded
ones, so a run can be exported after the fact as faithfully as live::

    from tether.capture import otel
    worker = project.worker(on_complete=otel.listener(project.store))

Spans go to the tracer provider given, else the global one (configure its exporter, e.g.
OTLP, as usual).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tether.capture.queries import exchanges
from tether.errors import ConfigError
from tether.store import Completion, Store

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ConfigError(
            "OpenTelemetry export needs the SDK: pip install 'tether[otel]'"
        ) from exc
    return trace


def export_run(store: Store, run_id: int, *, tracer_provider: TracerProvider | None = None
               ) -> int:
    """Export one finished run (with its steps and exchanges) as spans; returns how many."""
    trace = _otel()
    from opentelemetry.trace import SpanKind, Status, StatusCode

    provider = tracer_provider or trace.get_tracer_provider()
    tracer = provider.get_tracer("tether")
    run = store.get_run(run_id)
    task = store.get_task(run.task_id)
    start = run.started_at or run.created_at
    end = run.finished_at or time.time()
    root = tracer.start_span(
        f"tether.run {task.agent}",
        start_time=_ns(start),
        attributes={
            "tether.run_id": run.id, "tether.task_id": task.id, "tether.task": task.ref,
            "tether.agent": task.agent, "tether.key": task.key, "tether.attempt": run.attempt,
            "tether.reason": run.reason, "tether.status": str(run.status),
        },
    )
    if str(run.status) == "failed":
        root.set_status(Status(StatusCode.ERROR, run.failure_reason or "failed"))
        if run.failure_class is not None:
            root.set_attribute("tether.failure_class", str(run.failure_class))
    root_ctx = trace.set_span_in_context(root)
    count = 1
    step_spans: dict[int, Any] = {}
    for s in run.steps:
        span = tracer.start_span(
            f"tether.step {s.name}", context=root_ctx, start_time=_ns(s.started_at),
            attributes={"tether.step.seq": s.seq, "tether.step.status": s.status,
                        **({"tether.step.key": s.key} if s.key else {})},
        )
        if s.status == "failed":
            span.set_status(Status(StatusCode.ERROR, s.error or "failed"))
        step_spans[s.seq] = (span, s.finished_at or end)
        count += 1
    for e in exchanges(store, run_id):
        parent = step_spans.get(e.step) if e.step is not None else None
        ctx = trace.set_span_in_context(parent[0]) if parent else root_ctx
        attributes: dict[str, Any] = {
            "http.request.method": e.method, "url.full": e.url,
            "tether.exchange.seq": e.seq, "tether.fingerprint": e.fingerprint,
            "tether.library": e.library, "tether.response_body": e.response_body,
        }
        if e.status is not None:
            attributes["http.response.status_code"] = e.status
        if e.response_sha256:
            attributes["tether.response_sha256"] = e.response_sha256
        if e.response_size is not None:
            attributes["http.response.body.size"] = e.response_size
        span = tracer.start_span(e.method, context=ctx, kind=SpanKind.CLIENT,
                                 start_time=_ns(e.started_at), attributes=attributes)
        if e.error is not None or (e.status is not None and e.status >= 500):
            span.set_status(Status(StatusCode.ERROR, e.error or f"HTTP {e.status}"))
        span.end(end_time=_ns(e.started_at + (e.elapsed or 0.0)))
        count += 1
    for span, finished in step_spans.values():
        span.end(end_time=_ns(finished))
    root.end(end_time=_ns(end))
    return count


def listener(store: Store, *, tracer_provider: TracerProvider | None = None
             ) -> Callable[[Completion], None]:
    """An ``on_complete`` callback for a worker that exports every recorded run."""
    _otel()  # fail at set-up, not on the first run, when the extra is missing

    def on_complete(completion: Completion) -> None:
        export_run(store, completion.run_id, tracer_provider=tracer_provider)

    return on_complete
