"""``tether replay``, ``tether drift`` and ``tether capture …`` (exchanges, body, prune)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from tether.cli.app import JsonOpt, _project, app
from tether.cli.render import console, emit_json, when

capture_app = typer.Typer(help="World capture: recorded HTTP exchanges and their bodies.",
                          no_args_is_help=True)
app.add_typer(capture_app, name="capture")


@app.command()
def replay(
    run: Annotated[str, typer.Argument(help="A run id, or a task (AGENT/KEY) for its last run.")],
    as_json: JsonOpt = False,
) -> None:
    """Re-run a run's agent offline against its recorded HTTP answers and say whether it
    reaches the same output. Writes nothing to the store. Exit status 1 if it differs."""
    from tether.capture.replayer import replay as do_replay
    from tether.errors import NotFound

    with _project() as project:
        if run.isdigit():
            run_id = int(run)
        else:
            runs = project.store.runs_of(project.store.get_task(run).id, with_steps=False)
            if not runs:
                raise NotFound(f"task {run} has no run to replay")
            run_id = runs[-1].id
        result = do_replay(project, run_id)
    if as_json:
        emit_json(result.to_dict())
    else:
        verdict = "[green]matches[/]" if result.matches else "[red]differs[/]"
        console.print(
            f"replay of run {result.run_id} ({escape(result.task)}): {verdict} — "
            f"{len(result.answered)} requests answered from {result.recorded} recorded"
            + (f", {result.repeated} repeated" if result.repeated else "")
            + (f", {len(result.unused)} recorded not asked" if result.unused else ""),
            highlight=False,
        )
        for what in result.unrecorded:
            console.print(f"  [red]unrecorded request:[/] {escape(what)}", highlight=False)
        if result.error:
            console.print(f"  replay failed: {escape(result.error)}", highlight=False)
        if result.diff:
            console.print(Syntax(result.diff, "diff", theme="ansi_dark"))
    if not result.matches:
        sys.exit(1)


@app.command()
def drift(
    task: Annotated[str, typer.Argument(help="A task id, or AGENT/KEY.")],
    everywhere: Annotated[
        bool, typer.Option("--everywhere", help="Compare with the same requests of all tasks.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the task's HTTP requests whose answer changed between calls or between runs
    (did the world move?), with a diff of the answers."""
    from tether.capture.changes import drift as find_drift

    with _project() as project:
        found = find_drift(project.store, task, everywhere=everywhere)
    if as_json:
        emit_json([d.to_dict() for d in found])
        return
    if not found:
        console.print("No drift: every request got the same answer each time it was made.")
        return
    for d in found:
        within = sum(not c.across_runs for c in d.changes)
        console.print(
            f"[bold]{escape(d.method)} {escape(d.url)}[/]: {d.calls} calls, {d.answers} "
            f"distinct answers, {len(d.changes)} changes ({len(d.changes) - within} between "
            f"runs, {within} within a run)",
            highlight=False,
        )
        for c in d.changes:
            console.print(
                f"  run {c.before.run_id} call {c.before.seq} ({when(c.before.at)}) → "
                f"run {c.after.run_id} call {c.after.seq} ({when(c.after.at)})",
                highlight=False,
            )
            if c.diff:
                console.print(Syntax(c.diff, "diff", theme="ansi_dark"))


@capture_app.command("exchanges")
def list_exchanges(
    run: Annotated[int, typer.Argument(help="A run id.")],
    as_json: JsonOpt = False,
) -> None:
    """List a run's recorded HTTP exchanges, in order."""
    from tether.capture.queries import exchanges

    with _project() as project:
        found = exchanges(project.store, run)
    if as_json:
        emit_json([e.to_dict() for e in found])
        return
    if not found:
        console.print(f"run {run} recorded no HTTP exchange")
        return
    table = Table("#", "step", "request", "status", "bytes", "body", "ms")
    for e in found:
        table.add_row(
            str(e.seq), "" if e.step is None else str(e.step), escape(f"{e.method} {e.url}"),
            str(e.status) if e.status is not None else escape(e.error or "-"),
            "" if e.response_size is None else str(e.response_size), e.response_body,
            "" if e.elapsed is None else f"{e.elapsed * 1000:.1f}",
        )
    console.print(table)


@capture_app.command("body")
def show_body(sha: Annotated[str, typer.Argument(help="A body's SHA-256.")]) -> None:
    """Write a stored body to standard output, as stored (redacted)."""
    from tether.capture.queries import body

    with _project() as project:
        data = body(project.store, sha)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@capture_app.command("prune")
def prune_bodies(
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Age, e.g. 30d, 12h, 2w (default: the "
                     "capture_retention setting)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete the bodies of exchanges older than an age; their rows stay, marked pruned."""
    from rich.progress import Progress

    from tether.capture.retention import prune
    from tether.cli.render import err_console
    from tether.errors import ConfigError

    with _project() as project:
        age = older_than or project.settings.capture_retention
        if not age:
            raise ConfigError("say how old: --older-than 30d, or set capture_retention in "
                              "tether.toml")
        if as_json or dry_run:
            result = prune(project.store, age, dry_run=dry_run)
        else:
            with Progress(console=err_console, transient=True) as bar:
                task = bar.add_task("deleting bodies", total=None)
                result = prune(project.store, age,
                               progress=lambda done, total: bar.update(task, completed=done,
                                                                       total=total))
    if as_json:
        emit_json(result.to_dict())
        return
    verb = "would mark" if dry_run else "marked"
    console.print(
        f"{verb} {result.exchanges} exchanges older than {when(result.cutoff)} as pruned; "
        f"{'would delete' if dry_run else 'deleted'} {result.bodies_deleted} bodies "
        f"({result.bodies_kept} kept: younger exchanges use them)",
        highlight=False,
    )
