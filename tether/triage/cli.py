"""``tether bar`` and ``tether triage``: the manager's bar, training, the report."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tether.cli.app import JsonOpt, _project, app
from tether.cli.operate import ByOpt, _actor
from tether.cli.render import console, emit_json
from tether.triage.bars import audit_entries, bar_history, get_bar, set_bar
from tether.triage.errors import TriageError

bar_app = typer.Typer(help="The production bar: what the automated share must meet.",
                      no_args_is_help=True)
triage_app = typer.Typer(help="The triage model that routes hard cases to review.",
                         no_args_is_help=True)
app.add_typer(bar_app, name="bar")
app.add_typer(triage_app, name="triage")

AgentArg = Annotated[str, typer.Argument(help="The agent's name.")]


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bar_app.command("set")
def bar_set(
    agent: AgentArg,
    precision: Annotated[
        float | None, typer.Option(help="Minimum precision of the automated share, e.g. 0.98.")
    ] = None,
    accuracy: Annotated[
        float | None, typer.Option(help="Minimum accuracy of the automated share instead.")
    ] = None,
    confidence: Annotated[float, typer.Option(help="Confidence level, e.g. 0.95.")] = 0.95,
    rollout: Annotated[
        float, typer.Option(help="Share of automated runs still sampled for review.")
    ] = 0.05,
    by: ByOpt = None,
    note: Annotated[str | None, typer.Option("--note", "-m", help="Why.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set AGENT's production bar (recorded with who and when; audited)."""
    if (precision is None) == (accuracy is None):
        raise TriageError(
            f"bar for {agent!r}: give exactly one of --precision or --accuracy, e.g. "
            "--precision 0.98"
        )
    metric, target = ("precision", precision) if precision is not None else ("accuracy", accuracy)
    assert target is not None
    with _project() as project:
        if agent not in project.graph.agents:
            raise TriageError(
                f"bar: no agent named {agent!r} in this project; known: "
                f"{', '.join(sorted(project.graph.agents)) or 'none'}"
            )
        bar = set_bar(project.store, agent, metric=metric, target=target,
                      confidence=confidence, by=_actor(by), note=note,
                      rollout_rate=rollout)
    if as_json:
        emit_json(bar.to_dict())
        return
    console.print(f"{escape(agent)}: {bar.describe()} (set by {escape(bar.set_by)})")


@bar_app.command("show")
def bar_show(agent: AgentArg, as_json: JsonOpt = False) -> None:
    """Show AGENT's current bar and every change to it."""
    with _project() as project:
        current = get_bar(project.store, agent)
        history = bar_history(project.store, agent)
        audit = audit_entries(project.store, f"agent:{agent}")
    if as_json:
        emit_json({
            "agent": agent,
            "bar": current.to_dict() if current else None,
            "history": [b.to_dict() for b in history],
            "audit": [a.to_dict() for a in audit],
        })
        return
    if current is None:
        console.print(f"{escape(agent)} has no bar; set one with `tether bar set {agent} "
                      "--precision 0.98 --confidence 0.95`")
        return
    console.print(f"{escape(agent)}: {current.describe()}")
    table = Table("set at", "by", "metric", "target", "confidence", "rollout", "note")
    for b in reversed(history):
        table.add_row(_when(b.set_at), escape(b.set_by), b.metric, f"{b.target:g}",
                      f"{b.confidence:g}", f"{b.rollout_rate:g}", escape(b.note or ""))
    console.print(table)


def _report_path(html: Path | None) -> Path | None:
    return html


__all__ = ["bar_app", "triage_app"]
