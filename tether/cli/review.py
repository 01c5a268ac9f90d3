"""``tether review`` (the queue, verdicts) and ``tether examples`` (coverage, calibration)."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tether.cli import render
from tether.cli.app import JsonOpt, _project, app
from tether.cli.render import console, emit_json
from tether.errors import ConfigError, NotFound

review_app = typer.Typer(help="Review agents' outputs: the queue, verdicts.",
                         no_args_is_help=True)
examples_app = typer.Typer(help="The example store: coverage and threshold calibration.",
                           no_args_is_help=True)
app.add_typer(review_app, name="review")
app.add_typer(examples_app, name="examples")


def _reviewer(name: str | None) -> str:
    if name:
        return name
    for var in ("TETHER_ACTOR", "USER"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return "unknown"


@review_app.command("list")
def list_(
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's runs.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include runs already reviewed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The runs waiting for review, oldest first."""
    from tether.review import queue

    with _project() as project:
        items = queue(project.store, agent=agent, include_reviewed=all_)
    if as_json:
        emit_json([i.to_dict() for i in items])
        return
    if not items:
        console.print("Nothing to review." if not all_ else "No run was queued for review.")
        return
    table = Table("run", "task", "source", "score", "held", "queued", "reviewed", "output")
    for i in items:
        table.add_row(
            str(i.run_id), escape(i.task), i.source,
            "-" if i.score is None else f"{i.score:.2f}", "yes" if i.held else "",
            render.when(i.created_at), render.when(i.reviewed_at), escape(render.brief(i.output)),
        )
    console.print(table)


@review_app.command()
def show(
    run: Annotated[int, typer.Argument(help="The run id.")],
    as_json: JsonOpt = False,
) -> None:
    """A run's output, its queue entry, its reviews and the examples it was shown."""
    from tether.review import queued, reviews_of, shown_to

    with _project() as project:
        store = project.store
        r = store.get_run(run)
        task = store.get_task(r.task_id)
        entry = queued(store, run)
        done = reviews_of(store, run)
        shown = shown_to(store, run)
    if as_json:
        emit_json({
            "run_id": r.id, "task": task.ref, "agent": task.agent, "status": str(r.status),
            "output": r.output, "queue": entry.to_dict() if entry else None,
            "reviews": [x.to_dict() for x in done],
            "examples_shown": [
                {"example_id": e.id, "similarity": e.similarity, "case": e.case} for e in shown
            ],
        })
        return
    console.print(f"[bold]run {r.id}[/] of {escape(task.ref)} ({render.status(str(r.status))})")
    console.print(f"output: {escape(json.dumps(r.output, default=str))}")
    if entry:
        console.print(f"queued {render.when(entry.created_at)} by {entry.source}"
                      + (" (triggers held)" if entry.held else ""))
    for x in done:
        console.print(f"- {x.verdict} by {escape(x.reviewer)} at {render.when(x.created_at)}"
                      + (f": {escape(x.reason)}" if x.reason else "")
                      + (f" → example {x.example_id}" if x.example_id else ""))
    if not done:
        console.print("not reviewed yet")
    for e in shown:
        console.print(f"shown example {e.id} (similarity {e.similarity:.3f})")


@review_app.command()
def record(
    run: Annotated[int, typer.Argument(help="The run id.")],
    verdict: Annotated[str, typer.Option("--verdict", help="correct, incorrect or partial.")],
    reason: Annotated[
        str | None, typer.Option("--reason", help="What was wrong (required unless correct).")
    ] = None,
    corrected_output: Annotated[
        str | None,
        typer.Option("--corrected-output", help="The right output, as JSON (or @file.json)."),
    ] = None,
    reviewer: Annotated[
        str | None,
        typer.Option("--reviewer", help="Who reviews (default: $TETHER_ACTOR, else $USER)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a verdict on a run. Reviews are never changed: another review is added."""
    from tether.review import record_review

    corrected = _parse_json(corrected_output)
    with _project() as project:
        store = project.store
        try:  # the agent's declared example fields, when the project has the agent
            agent = project.graph.agents.get(store.get_task(store.get_run(run).task_id).agent)
        except NotFound:
            agent = None  # record_review says the run does not exist
        review = record_review(
            store, run, verdict=verdict, reviewer=_reviewer(reviewer), reason=reason,
            corrected_output=corrected, agent=agent, graph=project.graph,
        )
    if as_json:
        emit_json(review.to_dict())
        return
    console.print(
        f"recorded review {review.id}: run {review.run_id} {review.verdict} "
        f"(by {escape(review.reviewer)})"
        + (f"; example {review.example_id} added" if review.example_id else "")
    )


def _parse_json(raw: str | None) -> Any:
    if raw is None:
        return None
    text = raw
    if raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text()
        except OSError as exc:
            raise ConfigError(f"--corrected-output {raw}: cannot read it: {exc.strerror}") \
                from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--corrected-output is not valid JSON ({exc.msg} at column {exc.colno}); quote it "
            """for the shell, e.g. --corrected-output '{"decision": "refer"}'"""
        ) from exc


@examples_app.command("coverage")
def coverage_(
    agent: Annotated[str, typer.Argument(help="The agent.")],
    as_json: JsonOpt = False,
) -> None:
    """The share of the agent's finished runs that were shown at least one example."""
    from tether.review.examples import coverage

    with _project() as project:
        c = coverage(project.store, agent)
    if as_json:
        emit_json(c.to_dict())
        return
    console.print(
        f"{escape(agent)}: {c.covered} of {c.runs} runs got at least one example "
        f"({c.share:.1%}); {c.examples} examples in the store"
    )


@examples_app.command()
def calibrate(
    agent: Annotated[str, typer.Argument(help="The agent.")],
    dataset: Annotated[
        Path, typer.Option("--dataset", help='JSON lines of {"input": ..., "label": ...}.')
    ],
    k: Annotated[int, typer.Option("--k", help="Examples asked for per case.")] = 3,
    thresholds: Annotated[
        str | None,
        typer.Option("--thresholds", help="Comma-separated (default 0.50,0.55,…,0.95)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Coverage and accuracy with vs without examples per threshold; recommends one."""
    from rich.progress import Progress

    from tether.review.calibrate import DEFAULT_THRESHOLDS, read_dataset
    from tether.review.calibrate import calibrate as run_calibration

    levels: tuple[float, ...] = DEFAULT_THRESHOLDS
    if thresholds:
        try:
            levels = tuple(float(x) for x in thresholds.split(",") if x.strip())
        except ValueError as exc:
            raise ConfigError(
                f"--thresholds {thresholds!r}: give numbers separated by commas, e.g. 0.6,0.8"
            ) from exc
    cases = read_dataset(dataset)
    with _project() as project:
        agent_obj = project.graph[agent]
        with Progress(console=render.err_console, transient=True) as progress:
            bar = progress.add_task("calibrating", total=len(cases))
            result = run_calibration(
                project.store, agent_obj, cases, thresholds=levels, k=k,
                progress=lambda n: progress.update(bar, advance=n),
            )
    if as_json:
        emit_json(result.to_dict())
        return
    table = Table("threshold", "coverage", "accuracy with", "without", "gain",
                  "covered: with", "covered: without",
                  title=f"{escape(agent)}: {result.cases} cases, k={result.k}")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    for p in result.points:
        table.add_row(f"{p.threshold:.2f}", f"{p.coverage:.1%} ({p.covered})",
                      pct(p.accuracy_with), pct(p.accuracy_without), f"{p.gain:+.1%}",
                      pct(p.covered_accuracy_with), pct(p.covered_accuracy_without))
    console.print(table)
    if result.recommended is None:
        console.print("recommended: inject no examples")
    else:
        console.print(f"recommended example_threshold={result.recommended:.2f} "
                      f"(now {result.current:.2f})")
    for note in result.notes:
        console.print(f"note: {escape(note)}")
