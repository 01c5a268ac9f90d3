"""The ``tether`` command."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.markup import escape

from tether.cli import render
from tether.cli.render import console, emit_json
from tether.errors import ConfigError, TetherError
from tether.project import Project
from tether.store import Completion, TaskStatus

app = typer.Typer(
    name="tether",
    help="Run AI agents in production: record every run, link agents by triggers, retry, explain.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)
db_app = typer.Typer(help="The store's database: migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
from tether.evals.cli import eval_app  # noqa: E402

app.add_typer(eval_app, name="eval")

_state: dict[str, Any] = {"project_dir": None}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.callback()
def _root(
    project: Annotated[
        Path | None,
        typer.Option(
            "--project",
            "-C",
            help="Project folder (default: the current folder).",
            envvar="TETHER_PROJECT_DIR",
        ),
    ] = None,
) -> None:
    _state["project_dir"] = project


def _project(**overrides: Any) -> Project:
    return Project.load(_state["project_dir"], **overrides)


def _parse_input(raw: str | None) -> Any:
    if raw is None:
        return None
    text = raw
    if raw.startswith("@"):
        path = Path(raw[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--input {raw}: cannot read {path}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--input is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            """quote it for the shell, e.g. --input '{"name": "Ada"}', or pass @file.json"""
        ) from exc


# -- project ---------------------------------------------------------------------------


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
) -> None:
    """Create a project: tether.toml and an agents/ folder with an example agent."""
    from tether.cli.scaffold import scaffold

    written = scaffold(directory)
    for path in written:
        console.print(f"created {escape(str(path))}")
    if not written:
        console.print("nothing to do: the project files exist already")
    where = "" if directory == Path(".") else f" -C {directory}"
    console.print(
        "\nNext:\n"
        f"  tether{where} agents\n"
        f"  tether{where} submit greet ada --input '{{\"name\": \"Ada\"}}'\n"
        f"  tether{where} worker --until-idle\n"
        f"  tether{where} show greet/ada"
    )


@app.command()
def demo(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Folder to run in (default: the current one).")
    ] = None,
) -> None:
    """Run the bundled multi-team example (KYC, risk, pricing → quote) on a local service."""
    from tether.demo.run import run_demo

    run_demo((directory or _state["project_dir"] or Path.cwd()).resolve(), console=console)


@app.command()
def agents(as_json: JsonOpt = False) -> None:
    """List the project's agents: what each subscribes to and emits."""
    graph = _project().graph
    if as_json:
        emit_json([render.agent_dict(graph[name]) for name in graph.order()])
        return
    if not len(graph):
        console.print("No agents found: put modules with @tether.agent functions in agents/")
        return
    console.print(render.agents_table(graph))


# -- work ------------------------------------------------------------------------------


@app.command()
def submit(
    agent: Annotated[str, typer.Argument(help="The agent to run.")],
    key: Annotated[str, typer.Argument(help="The task's key, e.g. a case id.")],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="JSON input, or @file.json.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit work: create task AGENT/KEY and queue a run. Idempotent; new input starts a
    new run."""
    data = _parse_input(input)
    with _project() as project:
        result = project.submit(agent, key) if input is None else project.submit(agent, key, data)
        if as_json:
            emit_json({"task_id": result.task_id, "task": f"{agent}/{key}",
                       "created": result.created, "run_id": result.run_id})
            return
        ref = escape(f"{agent}/{key}")
        if result.run_id is not None:
            console.print(f"queued run {result.run_id} for {ref} (task {result.task_id})")
        else:
            console.print(
                f"{ref} exists (task {result.task_id}) and nothing new arrived: no run queued"
            )


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, help="Runs at once.")
    ] = None,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once nothing is queued or running.")
    ] = False,
    lease: Annotated[
        float | None, typer.Option("--lease", min=0.1, help="Lease seconds (default 30).")
    ] = None,
    poll: Annotated[float | None, typer.Option("--poll", min=0.001, help="Idle poll, s.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per run.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print final counts as JSON.")] = False,
    provider: Annotated[
        str | None,
        typer.Option("--provider", "-p", help="local (default), celery or temporal."),
    ] = None,
) -> None:
    """Execute queued runs. Ctrl-C stops cleanly: runs in flight finish; a second Ctrl-C
    releases them to be retried."""
    from tether.providers import get_provider

    overrides = {
        "concurrency": concurrency,
        "lease_seconds": lease,
        "poll_interval": poll,
        "provider": provider,
    }
    project = _project(**overrides)
    store, graph = project.store, project.graph
    refs: dict[int, str] = {}

    def on_complete(c: Completion) -> None:
        if quiet or as_json:
            return
        ref = refs.get(c.task_id) or store.get_task(c.task_id).ref
        refs[c.task_id] = ref
        if c.succeeded:
            line = f"[green]✓[/] {escape(ref)} run {c.run_id}"
            if c.edges:
                line += " → " + ", ".join(escape(f"{e.name}→{e.agent}/{e.key}") for e in c.edges)
        else:
            then = "retry queued" if c.retry_at else "no retry"
            line = (
                f"[red]✗[/] {escape(ref)} run {c.run_id} attempt {c.attempt}: "
                f"{escape(c.failure_class or '')}: {escape(c.failure_reason or '')} ({then})"
            )
        console.print(line, highlight=False)

    w = get_provider(project)
    stops = {"n": 0}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stops["n"] += 1
        if stops["n"] == 1:
            render.err_console.print(
                "stopping: runs in flight will finish (Ctrl-C again to release them now)"
            )
            w.stop()
        else:
            w.abort()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    settings = project.settings
    if not (quiet or as_json):
        console.print(
            f"{w.name} worker: {len(graph)} agents, concurrency {settings.concurrency}, "
            f"store {escape(store.engine.url.render_as_string(hide_password=True))}"
        )
    try:
        stats = w.run(until_idle=until_idle, on_complete=on_complete)
    finally:
        project.close()
    summary = {
        "provider": w.name,
        "claimed": stats.claimed,
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "retries_queued": stats.retries_queued,
        "reaped": stats.reaped,
        "released": stats.released,
    }
    if as_json:
        emit_json(summary)
    else:
        console.print(
            f"done: {stats.succeeded} succeeded, {stats.failed} failed "
            f"({stats.retries_queued} retries queued), {stats.reaped} lost runs recovered, "
            f"{stats.released} released"
        )


# -- inspection ------------------------------------------------------------------------


@app.command()
def tasks(
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Only this agent.")] = None,
    status: Annotated[
        TaskStatus | None, typer.Option("--status", "-s", help="Only this status.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List tasks, newest first, with the status derived from their runs."""
    with _project() as project:
        found = project.store.list_tasks(agent=agent, status=status, limit=limit)
    if as_json:
        emit_json([{**t.to_dict(), "ref": t.ref} for t in found])
        return
    if not found:
        console.print("No tasks. Submit work with `tether submit AGENT KEY`, or run `tether demo`.")
        return
    console.print(render.tasks_table(found))


@app.command()
def show(
    task: Annotated[str, typer.Argument(help="A task id, or AGENT/KEY.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a task: its inputs, runs with their steps, and the triggers in and out."""
    with _project() as project:
        store = project.store
        t = store.get_task(task)
        parts = (
            t,
            store.inputs(t.id),
            store.runs_of(t.id),
            store.triggers_in(t.id),
            store.triggers_out(t.id),
            store.actions(t.id),
        )
    if as_json:
        emit_json(render.task_dict(*parts))
    else:
        render.show_task(*parts)


# -- database --------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the store's migrations (creates the schema on an empty database)."""
    from tether.store import Store, migrate

    settings = _project().settings
    store = Store.open(settings, migrate_=False)
    try:
        before = migrate.current_revision(store.engine)
        migrate.upgrade(store.engine)
        after = migrate.current_revision(store.engine)
    finally:
        store.close()
    if before == after:
        console.print(f"already at {after}")
    else:
        console.print(f"upgraded {before or '(empty)'} → {after}")


@db_app.command("current")
def db_current(as_json: JsonOpt = False) -> None:
    """Show the store's URL and migration revision."""
    from tether.store import Store, migrate

    settings = _project().settings
    store = Store.open(settings, migrate_=False)
    try:
        rev = migrate.current_revision(store.engine)
    finally:
        store.close()
    url = store.engine.url.render_as_string(hide_password=True)
    if as_json:
        emit_json({"url": url, "revision": rev, "head": migrate.HEAD})
    else:
        console.print(f"{escape(url)}: revision {rev or '(empty)'} (head {migrate.HEAD})")


@db_app.command("copy")
def db_copy(
    to: Annotated[str, typer.Option("--to", help="URL of the empty target database.")],
    as_json: JsonOpt = False,
) -> None:
    """Copy this project's store (e.g. the SQLite default) into another database (e.g. a new
    PostgreSQL one), keeping every id, run, step, edge and ledger entry."""
    from rich.progress import Progress

    from tether.store import Store
    from tether.store.copy import copy_store

    settings = _project().settings
    source = Store.open(settings)
    target = Store.open(to)
    try:
        if as_json:
            counts = copy_store(source, target)
        else:
            with Progress(console=render.err_console, transient=True) as progress:
                bar = progress.add_task("copying", total=None)
                counts = copy_store(
                    source,
                    target,
                    progress=lambda table, n: progress.update(
                        bar, advance=n, description=f"copying {table}"
                    ),
                )
    finally:
        source.close()
        target.close()
    if as_json:
        emit_json(counts)
    else:
        rows = ", ".join(f"{n} {name}" for name, n in counts.items())
        console.print(f"copied {rows}")
        console.print("now point the project at it: TETHER_DATABASE_URL=… or database_url "
                      "in tether.toml")


def main() -> None:
    """Entry point: run the CLI; a Tether error is one line on stderr, exit status 1."""
    try:
        app()
    except TetherError as exc:
        render.err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
