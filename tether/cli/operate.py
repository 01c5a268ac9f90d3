"""Operator commands: re-run a failed task with a note, cancel a task, verify the history."""

from __future__ import annotations

import getpass
import os
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress

from tether.cli.app import JsonOpt, _project, app
from tether.cli.render import console, emit_json, err_console

NoteOpt = Annotated[
    str | None, typer.Option("--note", "-m", help="Why: the context the agent did not have.")
]
ByOpt = Annotated[
    str | None,
    typer.Option("--by", help="Who is acting (default: $TETHER_ACTOR, else your login)."),
]


def _actor(by: str | None) -> str:
    if by:
        return by
    if os.environ.get("TETHER_ACTOR"):
        return os.environ["TETHER_ACTOR"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return "unknown"


@app.command()
def retry(
    task: Annotated[str, typer.Argument(help="A task id, or AGENT/KEY.")],
    note: NoteOpt = None,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-run a failed (or cancelled) task as an operator; the agent reads --note as
    ctx.note. Recorded with who did it and when."""
    with _project() as project:
        action, run_id = project.store.retry_task(task, note=note, actor=_actor(by))
        ref = project.store.get_task(action.task_id).ref
    if as_json:
        emit_json({**action.to_dict(), "task": ref})
        return
    console.print(
        f"queued run {run_id} of {escape(ref)} (operator retry by {escape(action.actor)})"
        + (f": {escape(note)}" if note else "")
    )


@app.command()
def cancel(
    task: Annotated[str, typer.Argument(help="A task id, or AGENT/KEY.")],
    note: NoteOpt = None,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop further runs of a task: queued runs are cancelled, no retry or trigger starts
    another (a run in flight finishes). `tether retry` lifts it."""
    with _project() as project:
        action = project.store.cancel_task(task, note=note, actor=_actor(by))
        ref = project.store.get_task(action.task_id).ref
    if as_json:
        emit_json({**action.to_dict(), "task": ref})
        return
    console.print(f"cancelled {escape(ref)} (by {escape(action.actor)})")


@app.command()
def verify(as_json: JsonOpt = False) -> None:
    """Check every task's hash chain: report any recorded input, step, run outcome or
    operator action that was changed or removed. Exit status 1 if any was."""
    from tether.store.verify import verify as run_verify

    with _project() as project:
        store = project.store
        if as_json:
            report = run_verify(store.engine)
        else:
            with Progress(console=err_console, transient=True) as progress:
                bar = progress.add_task("verifying", total=None)
                report = run_verify(
                    store.engine, progress=lambda n: progress.advance(bar, n)
                )
    if as_json:
        emit_json(report.to_dict())
    elif report.ok:
        console.print(
            f"[green]ok[/]: {report.tasks} tasks, {report.entries} records, every chain intact"
        )
    else:
        console.print(
            f"[red]{len(report.problems)} task(s) with a broken chain[/] "
            f"(of {report.tasks} tasks, {report.entries} records):"
        )
        for p in report.problems:
            where = f"entry {p.seq}" if p.seq is not None else "no entry"
            console.print(
                f"  {escape(p.task)} ({where}, {escape(p.ref)}): {p.kind}: {escape(p.detail)}"
            )
    if not report.ok:
        raise typer.Exit(1)
