"""How the CLI shows things: Rich tables for people, ``--json`` for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tether.graph import Agent, Graph
from tether.store import Run, Task, TaskInput, Trigger
from tether.store.records import OperatorAction

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "running": "cyan",
    "queued": "yellow",
    "retrying": "yellow",
    "pending": "dim",
    "waiting": "magenta",
    "cancelled": "dim",
}


def emit_json(data: Any) -> None:
    """Print JSON to stdout, plain (no markup, no wrapping), for programs to read."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def when(ts: float | None) -> str:
    """A local, second-precision time, or ``-``."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    """A duration readable at a glance: ``412 µs``, ``35 ms``, ``2.1 s``."""
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.0f} ms"
    return f"{value:.1f} s"


def status(text: str) -> str:
    """A status word with its colour."""
    style = STATUS_STYLE.get(str(text), "")
    return f"[{style}]{escape(str(text))}[/]" if style else escape(str(text))


def brief(value: Any, width: int = 60) -> str:
    """JSON on one line, cut to ``width`` characters."""
    text = json.dumps(value, default=str) if value is not None else "-"
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def agents_table(graph: Graph) -> Table:
    table = Table(title="Agents", title_justify="left")
    for col in ("agent", "team", "subscribes", "emits", "max attempts"):
        table.add_column(col)
    for name in graph.order():
        a = graph[name]
        table.add_row(
            escape(a.name),
            escape(a.team or "-"),
            escape(", ".join(a.subscribes) or "- (root)"),
            escape(_emits_text(a)),
            str(a.retry.max_attempts),
        )
    return table


def _emits_text(a: Agent) -> str:
    if a.dynamic:
        return "(decided by a function)"
    names = ", ".join(a.static_emits)
    if callable(a.emits) and not isinstance(a.emits, str):
        return f"one of: {names}"
    return names or "-"


def agent_dict(a: Agent) -> dict[str, Any]:
    return {
        "name": a.name,
        "team": a.team,
        "subscribes": list(a.subscribes),
        "emits": list(a.static_emits),
        "emits_decided_by_function": callable(a.emits) and not isinstance(a.emits, str),
        "max_attempts": a.retry.max_attempts,
        "is_async": a.is_async,
        "description": a.description,
    }


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    """A table of ``rows`` (cells already escaped or styled) under ``columns``."""
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    return t


def tasks_table(tasks: list[Task]) -> Table:
    return table(
        f"Tasks ({len(tasks)})", ("id", "task", "status", "runs", "created"),
        ((str(t.id), escape(t.ref), status(t.status), str(t.runs), when(t.created_at))
         for t in tasks),
    )


def show_task(
    task: Task,
    inputs: list[TaskInput],
    runs: list[Run],
    trig_in: list[Trigger],
    trig_out: list[Trigger],
    actions: list[OperatorAction],
) -> None:
    console.print(
        f"[bold]Task {task.id}[/] {escape(task.ref)}  {status(task.status)}  "
        f"created {when(task.created_at)}"
    )
    if inputs:
        console.print("[bold]Inputs[/]")
        for i in inputs:
            console.print(f"  #{i.seq} {when(i.received_at)}  {brief(i.data, 100)}")
    if trig_in:
        console.print("[bold]Triggered by[/]")
        for t in trig_in:
            console.print(
                f"  {escape(t.name)} ← {escape(t.upstream_ref)} (run {t.upstream_run_id}) "
                f"at {when(t.created_at)}"
            )
    if not runs:
        console.print("[dim]No runs yet.[/]")
    for r in runs:
        took = seconds(r.finished_at - r.started_at) if r.finished_at and r.started_at else "-"
        console.print(
            f"[bold]Run {r.id}[/] attempt {r.attempt} ({escape(r.reason)})  {status(r.status)}"
            f"  started {when(r.started_at)}  took {took}  worker {escape(r.worker or '-')}"
        )
        if r.note:
            console.print(f"  note: {escape(r.note)}")
        if r.status == "queued" and r.attempt > 1:
            console.print(f"  retry due {when(r.available_at)}")
        if r.failure_class:
            console.print(
                f"  [red]{escape(r.failure_class)}[/]: {escape(r.failure_reason or '')}"
            )
        if r.output is not None:
            console.print(f"  output: {brief(r.output, 100)}")
        if r.waiting_for:
            console.print(f"  [magenta]task waits[/]: {escape(r.waiting_for)}")
        if r.steps:
            table = Table(box=None, pad_edge=False, show_header=True, padding=(0, 2))
            for col in ("", "step", "status", "took", "key", "output"):
                table.add_column(col)
            for s in r.steps:
                table.add_row(
                    str(s.seq),
                    escape(s.name),
                    status(s.status),
                    seconds(s.duration),
                    escape(s.key or ""),
                    escape(s.error) if s.error else brief(s.output, 50),
                )
            console.print(table)
    if actions:
        console.print("[bold]Operator actions[/]")
        for a in actions:
            run = f" → run {a.run_id}" if a.run_id else ""
            note = f": {escape(a.note)}" if a.note else ""
            console.print(
                f"  {when(a.created_at)} {escape(a.action)} by {escape(a.actor)}{run}{note}"
            )
    if trig_out:
        console.print("[bold]Triggered[/]")
        for t in trig_out:
            console.print(
                f"  {escape(t.name)} → {escape(t.downstream_ref)} (task {t.downstream_task_id}) "
                f"at {when(t.created_at)}"
            )


def task_dict(
    task: Task,
    inputs: list[TaskInput],
    runs: list[Run],
    trig_in: list[Trigger],
    trig_out: list[Trigger],
    actions: list[OperatorAction],
) -> dict[str, Any]:
    return {
        **task.to_dict(),
        "ref": task.ref,
        "inputs": [i.to_dict() for i in inputs],
        "runs": [r.to_dict() for r in runs],
        "triggers_in": [t.to_dict() for t in trig_in],
        "triggers_out": [t.to_dict() for t in trig_out],
        "actions": [a.to_dict() for a in actions],
    }
