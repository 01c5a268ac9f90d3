"""``tether why``, ``tether why-not`` and ``tether graph``: provenance from recorded rows."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from tether.cli.app import JsonOpt, _project, app
from tether.cli.render import brief, console, emit_json, seconds, status, when
from tether.graph import provenance
from tether.graph import render as graph_render
from tether.graph.why_not import Explanation, TriggerCheck, WhyNot, why_not
from tether.store import Run, Trigger


def print_tree(tree: Tree) -> None:
    """A tree wraps long lines on a terminal; for a pipe or a file, lines stay whole."""
    if console.is_terminal:
        console.print(tree, soft_wrap=False)
    else:
        Console(file=console.file, width=100_000, color_system=None).print(tree)


def _mark(state: str) -> str:
    if state == "succeeded":
        return "[green]✓[/]"
    if state == "failed":
        return "[red]✗[/]"
    return status(state)


# -- why -------------------------------------------------------------------------------------


def _run_lines(run: Run | None) -> list[str]:
    if run is None:
        return ["  [dim]no succeeded run[/]"]
    took = (
        seconds(run.finished_at - run.started_at) if run.finished_at and run.started_at else "-"
    )
    lines = [
        f"  run {run.id} · attempt {run.attempt} ({escape(run.reason)}) · {status(run.status)}"
        f" at {when(run.finished_at)} · took {took}"
    ]
    if run.note:
        lines.append(f"  note: {escape(run.note)}")
    for s in run.steps:
        result = f"[red]{escape(s.error)}[/]" if s.error else brief(s.output, 70)
        key = f" [dim]key {escape(s.key)}[/]" if s.key else ""
        lines.append(
            f"    {s.seq}. {escape(s.name)}{key} {_mark(s.status)} {seconds(s.duration)}"
            f" → {result}"
        )
    if run.output is not None:
        lines.append(f"  output: {brief(run.output, 100)}")
    return lines


def _cause_label(cause: provenance.Cause, via: Trigger | None) -> Group:
    t = cause.task
    head = f"[bold]{escape(t.ref)}[/] (task {t.id}, {status(t.status)})"
    if via is not None:
        head = (
            f"[cyan]{escape(via.name)}[/] fired at {when(via.created_at)} ← "
            f"{head}"
        )
    lines = [head, *_run_lines(cause.run)]
    if cause.note:
        lines.append(f"  [yellow]{escape(cause.note)}[/]")
    return Group(*(Text.from_markup(line) for line in lines))


def why_tree(answer: provenance.Why) -> Tree:
    """``tether why`` for people: the task, then each trigger that fed it, recursively."""
    tree = Tree(_cause_label(answer.root, None), guide_style="dim")
    shown: set[tuple[int, int | None]] = set()

    def add(branch: Tree, cause: provenance.Cause) -> None:
        for edge in cause.triggered_by:
            up = edge.upstream
            seen = (up.task.id, None if up.run is None else up.run.id)
            if seen in shown:
                branch.add(Text.from_markup(
                    f"[cyan]{escape(edge.trigger.name)}[/] fired at "
                    f"{when(edge.trigger.created_at)} ← [bold]{escape(up.task.ref)}[/] run "
                    f"{edge.trigger.upstream_run_id} [dim](shown above)[/]"
                ))
                continue
            shown.add(seen)
            add(branch.add(_cause_label(up, edge.trigger)), up)

    add(tree, answer.root)
    return tree


@app.command()
def why(
    task: Annotated[str, typer.Argument(help="A task id, or AGENT/KEY.")],
    run: Annotated[
        int | None,
        typer.Option("--run", help="Explain this run (default: the latest succeeded one)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Why a task did what it did: the trigger edges upstream of it, with each run that
    succeeded, its steps and output, and when each trigger fired."""
    with _project() as project:
        answer = provenance.why(project.store, task, run_id=run)
    if as_json:
        emit_json(answer.to_dict())
        return
    console.print(f"[bold]Why {escape(answer.task.ref)}[/]: {answer.depth} edge(s) deep")
    print_tree(why_tree(answer))
    if answer.truncated:
        console.print("[yellow]cut: more edges were recorded than one query follows[/]")


# -- why not ---------------------------------------------------------------------------------

_STATE_STYLE = {"never submitted": "red", "not created": "dim", "did not emit": "red",
                "cannot infer": "yellow", "no emitter": "red"}


def _state(text: str) -> str:
    style = _STATE_STYLE.get(text)
    return f"[{style}]{escape(text)}[/]" if style else status(text)


def _runs_line(runs: tuple[Run, ...], limit: int = 5) -> list[str]:
    lines = []
    for r in runs[-limit:]:
        line = f"    run {r.id} · attempt {r.attempt} ({escape(r.reason)}) · {status(r.status)}"
        if r.failure_class:
            line += f" · {escape(r.failure_class)}: {escape(r.failure_reason or '')}"
        if r.note:
            line += f" · note: {escape(r.note)}"
        lines.append(line)
    if len(runs) > limit:
        lines.insert(0, f"    [dim]… {len(runs) - limit} earlier run(s)[/]")
    return lines


def _explanation_label(ex: Explanation) -> Group:
    summary = ex.summary.removeprefix(f"{ex.ref} ")
    lines = [f"[bold]{escape(ex.ref)}[/] {_state(ex.state)} — {escape(summary)}"]
    if ex.runs:
        lines += _runs_line(ex.runs)
    return Group(*(Text.from_markup(line) for line in lines))


def _check_label(check: TriggerCheck) -> Text:
    mark = "[green]✓[/]" if check.fired else "[red]✗[/]"
    return Text.from_markup(f"{mark} [cyan]{escape(check.name)}[/] {escape(check.note)}")


def why_not_tree(answer: WhyNot) -> Tree:
    """``tether why-not`` for people: each subscribed trigger, and upstream to the causes."""
    tree = Tree(_explanation_label(answer.target), guide_style="dim")

    def add(branch: Tree, ex: Explanation) -> None:
        for check in ex.triggers:
            node = branch.add(_check_label(check))
            for up in check.upstream:
                add(node.add(_explanation_label(up)), up)

    add(tree, answer.target)
    return tree


@app.command("why-not")
def why_not_command(
    agent: Annotated[str, typer.Argument(help="The agent whose task did not run.")],
    key: Annotated[str, typer.Argument(help="The task's key.")],
    as_json: JsonOpt = False,
) -> None:
    """Why task AGENT/KEY did not run (or has not yet): which trigger never fired, and the
    upstream failure, retry or missing submission that is the root cause."""
    with _project() as project:
        answer = why_not(project.store, project.graph, agent, key)
    if as_json:
        emit_json(answer.to_dict())
        return
    console.print(f"[bold]Why not {escape(answer.target.ref)}?[/]")
    print_tree(why_not_tree(answer))
    if answer.root_causes:
        console.print("[bold]Root cause" + ("s" if len(answer.root_causes) > 1 else "") + ":[/]")
        for c in answer.root_causes:
            console.print(f"  • {escape(c.summary)}", highlight=False)


# -- graph -----------------------------------------------------------------------------------


class GraphFormat(StrEnum):
    """``tether graph --format``."""

    TEXT = "text"
    MERMAID = "mermaid"
    DOT = "dot"
    JSON = "json"


@app.command("graph")
def graph_command(
    fmt: Annotated[
        GraphFormat, typer.Option("--format", "-f", help="text, mermaid, dot or json.")
    ] = GraphFormat.TEXT,
    task: Annotated[
        str | None,
        typer.Option("--task", "-t", help="Show the tasks upstream and downstream of this "
                     "task (an id or AGENT/KEY) instead of the agent graph."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
) -> None:
    """Print the agent graph (agents, the triggers between them, their teams), or with
    --task the recorded tasks around one task."""
    chosen = GraphFormat.JSON if as_json else fmt
    with _project() as project:
        if task is not None:
            out = graph_render.render_tasks(provenance.task_graph(project.store, task), chosen)
        else:
            out = graph_render.render_agents(project.graph, chosen)
    sys.stdout.write(out)
    sys.stdout.flush()
