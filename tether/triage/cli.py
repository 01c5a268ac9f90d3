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


@triage_app.command("train")
def triage_train(
    agent: AgentArg,
    seed: Annotated[int, typer.Option(help="Seed of the train/held-out split.")] = 0,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train AGENT's triage model on its reviewed runs and choose the threshold for its bar."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from tether.triage.train import train

    with _project() as project, Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=console, transient=True, disable=as_json,
    ) as bar:
        job = bar.add_task("training", total=None)
        model = train(project.store, project.graph, agent, seed=seed, actor=_actor(by),
                      progress=lambda msg: bar.update(job, description=msg))
    if as_json:
        data = model.to_dict()
        data["metrics"] = {k: v for k, v in model.metrics.items() if k != "curve"}
        emit_json(data)
        return
    m = model.metrics
    console.print(f"model {model.id} for {escape(agent)}: trained on {m['train_rows']} runs, "
                  f"threshold chosen on {m['calibration_rows']} held-out runs "
                  f"(AUC {m['calibration_auc']:.3f})" if m.get("calibration_auc") is not None
                  else f"model {model.id} for {escape(agent)}")
    if model.threshold is None:
        console.print("[red]no threshold meets the bar: every run goes to review[/]")
    else:
        console.print(
            f"threshold {model.threshold:.4f}: {model.automated_share:.1%} automated, "
            f"held-out precision {m['calibration_precision']:.1%}"
        )


@triage_app.command("report")
def triage_report(
    agent: AgentArg,
    html: Annotated[Path | None, typer.Option("--html", help="Write an HTML report here.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """The Pareto curve, the chosen point, and whether the bar holds on recent reviews."""
    from tether.triage.report import report, write_html

    with _project() as project:
        data = report(project.store, agent)
    if html is not None:
        write_html(data, html)
    if as_json:
        emit_json(data)
        return
    chosen, recent = data["chosen"], data["recent"]
    console.print(f"{escape(agent)}: bar {'met' if data['bar_met'] else '[red]NOT met[/]'}")
    if chosen["threshold"] is not None:
        console.print(f"threshold {chosen['threshold']:.4f}: {chosen['automated_share']:.1%} "
                      f"automated, held-out precision {chosen['precision']:.1%}")
    console.print(f"recent: {recent['reviewed']} reviewed automated runs; {recent['status']}")
    for note in data["notes"]:
        console.print(f"[red]{escape(note)}[/]")
    if html is not None:
        console.print(f"report written to {escape(str(html))}")


__all__ = ["bar_app", "triage_app"]
