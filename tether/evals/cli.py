"""``tether eval``: datasets, experiments, scoring, comparison, subsets, reports."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tether.cli.render import console, emit_json, err_console, table

eval_app = typer.Typer(
    help="Evaluate agents: datasets with maturing labels, experiments, as-of scores, "
    "comparison, subsets, reports.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
AsOfOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--as-of",
        help="When labels are read: decision, latest or a duration such as 30d "
        "(repeat for several; the first is primary). Default: decision and latest.",
    ),
]
ScorerOpt = Annotated[
    str,
    typer.Option(
        "--scorer",
        help="exact, numeric:TOL, numeric:TOL% or a custom package.module:function.",
    ),
]
MaturityOpt = Annotated[
    str | None,
    typer.Option("--maturity", help="Labels younger than this (e.g. 30d) are immature."),
]


def _project() -> Any:
    from tether.cli.app import _project as load

    return load()


def _dataset(store: Any, ref: str) -> Any:
    """A stored dataset, or a file loaded (and stored) on the way."""
    from tether.evals import get_dataset, read_dataset, save_dataset

    if Path(ref).is_file():
        return save_dataset(store, read_dataset(ref))
    return get_dataset(store, ref)


def _as_of_table(ev: dict[str, Any]) -> Table:
    rows = []
    for name, s in ev["as_of"].items():
        agreement = "-" if s["agreement"] is None else f"{s['agreement']:.4f}"
        ci = "-" if s["ci_low"] is None else f"{s['ci_low']:.3f} to {s['ci_high']:.3f}"
        rows.append((escape(name), agreement, ci, str(s["scored"]), str(s["immature"]),
                     str(s["unlabeled"]), str(s["errors"])))
    return table(f"{escape(ev['experiment']['name'])}: agreement as of",
                 ("as of", "agreement", "95% CI", "scored", "immature", "unlabeled", "errors"),
                 rows)


def _print_eval(ev: dict[str, Any]) -> None:
    console.print(_as_of_table(ev))
    gap = ev["maturation_gap"].get("latest")
    if gap is not None:
        console.print(f"maturation gap (latest - decision): {gap:+.4f}")
    if ev["error_count"]:
        console.print(f"[red]{ev['error_count']} errors[/] (kept apart from the scores)")


@eval_app.command("load")
def load(
    file: Annotated[Path, typer.Argument(help="A .jsonl, .csv or .parquet dataset.")],
    name: Annotated[str | None, typer.Option("--name", help="Default: the file's stem.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load a dataset file into the store as a new version (or find the same version)."""
    from tether.evals import read_dataset, save_dataset

    dataset = read_dataset(file, name=name)
    with _project() as project:
        saved = save_dataset(project.store, dataset)
    out = {
        "name": saved.name,
        "version": saved.version,
        "ref": saved.ref,
        "id": saved.id,
        "cases": len(saved),
        "observations": saved.observations,
    }
    if as_json:
        emit_json(out)
    else:
        console.print(
            f"dataset {escape(saved.ref)}: {len(saved)} cases, "
            f"{saved.observations} label observations"
        )


@eval_app.command("datasets")
def datasets(as_json: JsonOpt = False) -> None:
    """List stored dataset versions, newest first."""
    from tether.evals import list_datasets

    with _project() as project:
        rows = list_datasets(project.store)
    if as_json:
        emit_json(rows)
        return
    console.print(table("Datasets", ("ref", "cases", "observations", "parent", "source"), (
        (escape(r["ref"]), str(r["cases"]), str(r["observations"]),
         escape(r["parent"] or ""), escape(r["source"] or ""))
        for r in rows
    )))


@eval_app.command("run")
def run(
    dataset: Annotated[str, typer.Argument(help="A stored dataset (NAME[@VERSION]) or a file.")],
    agent: Annotated[str, typer.Option("--agent", "-a", help="The agent to evaluate.")],
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Experiment name (default: AGENT on DATASET@VERSION); "
            "running an existing one resumes it.",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 64,
    as_of: AsOfOpt = None,
    scorer: ScorerOpt = "exact",
    maturity: MaturityOpt = None,
    cost_field: Annotated[
        str, typer.Option("--cost-field", help="The output field holding a case's cost.")
    ] = "cost",
    rerun_disagreements: Annotated[
        bool,
        typer.Option(
            "--rerun-disagreements",
            help="Re-run each case the agent gets wrong at once, for `tether eval disagreements`.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run an agent on every case of a dataset through the harness, then score it.
    Ctrl-C stops cleanly (runs in flight finish); run it again to resume."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from tether.evals.disagreements import disagrees
    from tether.evals.evaluation import evaluate_experiment
    from tether.evals.runner import ExperimentRunner, start

    stop = threading.Event()
    hits = {"n": 0}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        hits["n"] += 1
        if hits["n"] > 1:
            raise KeyboardInterrupt
        err_console.print("stopping: runs in flight will finish (Ctrl-C again to abandon them)")
        stop.set()

    previous = signal.signal(signal.SIGINT, on_signal)
    try:
        with _project() as project:
            store = project.store
            ds = _dataset(store, dataset)
            exp, _ = start(store, project.graph, ds, agent, name=name, cost_field=cost_field)
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
                disable=as_json,
                transient=True,
            ) as progress:
                bar = progress.add_task(f"{escape(exp.name)}", total=len(ds))
                runner = ExperimentRunner(
                    store,
                    project.graph,
                    exp,
                    ds,
                    concurrency=concurrency,
                    stop=stop,
                    progress=lambda done, total: progress.update(bar, completed=done),
                )
                stats = runner.run(
                    rerun_if=disagrees(ds, scorer=scorer) if rerun_disagreements else None
                )
            ev = evaluate_experiment(
                store,
                exp.id,
                as_of=as_of or ("decision", "latest"),
                scorer=scorer,
                maturity=maturity,
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    if as_json:
        emit_json({"run": stats.to_dict(), "evaluation": ev})
        return
    console.print(
        f"experiment {escape(exp.name)} (id {exp.id}): {stats.ran} cases run, "
        f"{stats.already_done} already done, {stats.failed} failed, {stats.reruns} re-runs "
        f"in {stats.seconds:.1f} s"
        + (" - interrupted: run the same command to resume" if stats.interrupted else "")
    )
    _print_eval(ev)


@eval_app.command("experiments")
def experiments(as_json: JsonOpt = False) -> None:
    """List experiments, newest first."""
    from tether.evals.experiments import experiment_rows

    with _project() as project:
        rows = experiment_rows(project.store)
    if as_json:
        emit_json(rows)
        return
    console.print(table("Experiments", ("id", "name", "agent", "dataset", "done"), (
        (str(r["id"]), escape(r["name"]), escape(r["agent"]), escape(r["dataset"]),
         f"{r['finished_cases']}/{r['cases']}")
        for r in rows
    )))


@eval_app.command("score")
def score(
    experiment: Annotated[str, typer.Argument(help="Experiment name or id.")],
    as_of: AsOfOpt = None,
    scorer: ScorerOpt = "exact",
    maturity: MaturityOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score an experiment as of one or more times (agreement, maturation gap, metrics)."""
    from tether.evals.evaluation import evaluate_experiment

    with _project() as project:
        ev = evaluate_experiment(
            project.store,
            experiment,
            as_of=as_of or ("decision", "latest"),
            scorer=scorer,
            maturity=maturity,
        )
    if as_json:
        emit_json(ev)
    else:
        _print_eval(ev)


@eval_app.command("report")
def report(
    experiment: Annotated[str, typer.Argument(help="Experiment name or id.")],
    html_out: Annotated[Path | None, typer.Option("--html", help="Write an HTML report.")] = None,
    md_out: Annotated[Path | None, typer.Option("--md", help="Write a Markdown report.")] = None,
    as_of: AsOfOpt = None,
    scorer: ScorerOpt = "exact",
    maturity: MaturityOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write an experiment's report: metrics, agreement vs label age, confusion, worst cases."""
    from tether.evals import report as render
    from tether.evals.evaluation import evaluate_experiment

    with _project() as project:
        ev = evaluate_experiment(
            project.store,
            experiment,
            as_of=as_of or ("decision", "latest"),
            scorer=scorer,
            maturity=maturity,
        )
    svgs = render.plots(ev) if html_out is not None or md_out is not None else None
    if html_out is not None:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(render.html_page(ev, svgs=svgs))
    if md_out is not None:
        render.markdown(ev, md_out, svgs=svgs)
    if as_json:
        emit_json(ev)
        return
    _print_eval(ev)
    for p in (html_out, md_out):
        if p is not None:
            console.print(f"wrote {escape(str(p))}")


@eval_app.command("compare")
def compare(
    a: Annotated[str, typer.Argument(help="Baseline experiment (name or id).")],
    b: Annotated[str, typer.Argument(help="Candidate experiment (name or id).")],
    as_of: Annotated[str, typer.Option("--as-of", help="decision, latest or 30d.")] = "latest",
    scorer: ScorerOpt = "exact",
    max_regressions: Annotated[
        int | None, typer.Option("--max-regressions", min=0, help="Fail above this many.")
    ] = None,
    max_drop: Annotated[
        float | None, typer.Option("--max-drop", min=0.0, help="Fail if agreement drops more.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare two experiments case by case; exit status 1 when a limit is exceeded."""
    from tether.evals.compare import compare as run_compare

    with _project() as project:
        out = run_compare(
            project.store,
            a,
            b,
            as_of=as_of,
            scorer=scorer,
            max_regressions=max_regressions,
            max_drop=max_drop,
        )
    if as_json:
        emit_json(out)
    else:
        console.print(
            f"{escape(out['b']['name'])} vs {escape(out['a']['name'])} on "
            f"{out['paired_cases']} cases: agreement {out['agreement_a']} -> {out['agreement_b']}"
            f" (delta {out['delta']}, 95% CI {out['delta_ci'][0]} to {out['delta_ci'][1]}, "
            f"McNemar p = {out['mcnemar_p']:.4g}); {len(out['fixed'])} fixed, "
            f"{len(out['regressed'])} regressed"
        )
        for r in out["regressed"][:20]:
            console.print(
                f"  [red]regressed[/] {escape(r['key'])}: "
                f"{escape(str(r['a_decision']))} -> {escape(str(r['b_decision']))}"
            )
        for f in out["failures"]:
            console.print(f"[red]FAIL[/] {escape(f)}")
    if not out["passed"]:
        raise typer.Exit(1)


@eval_app.command("subset")
def subset(
    dataset: Annotated[str, typer.Argument(help="A stored dataset (NAME[@VERSION]) or a file.")],
    size: Annotated[int, typer.Option("--size", "-n", min=1, help="Cases in the subset.")],
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same subset.")] = 0,
    stubborn_weight: Annotated[
        float,
        typer.Option(
            "--stubborn-weight",
            min=0.0,
            help="Extra weight per recent experiment that got a case wrong.",
        ),
    ] = 4.0,
    recent: Annotated[int, typer.Option("--recent", min=0, help="Experiments looked at.")] = 5,
    agent: Annotated[str | None, typer.Option("--agent", help="Only its experiments.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Default: NAME-subset.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write it as JSONL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw a label-balanced subset weighted toward stubborn failures and store it."""
    from tether.evals import save_dataset, write_jsonl
    from tether.evals.subsets import draw_subset, stubborn_counts, subset_summary

    with _project() as project:
        store = project.store
        ds = _dataset(store, dataset)
        stubborn = stubborn_counts(store, ds, recent=recent, agent=agent)
        sub = save_dataset(
            store,
            draw_subset(
                ds,
                size=size,
                seed=seed,
                stubborn=stubborn,
                stubborn_weight=stubborn_weight,
                name=name,
            ),
        )
    if out is not None:
        write_jsonl(sub, out)
    summary = {**subset_summary(sub, stubborn), "ref": sub.ref, "seed": seed}
    if as_json:
        emit_json(summary)
    else:
        per = ", ".join(f"{escape(k)}: {v}" for k, v in summary["per_label"].items())
        console.print(
            f"subset {escape(sub.ref)}: {len(sub)} cases ({per}); {summary['stubborn']} stubborn"
        )


@eval_app.command("disagreements")
def disagreements(
    experiment: Annotated[str, typer.Argument(help="Experiment name or id.")],
    as_json: JsonOpt = False,
) -> None:
    """Classify re-run disagreements: world moved, agent nondeterministic or agent wrong
    (needs `tether eval run --rerun-disagreements` and world capture)."""
    from tether.evals.disagreements import triage
    from tether.evals.experiments import get_experiment, results

    with _project() as project:
        exp = get_experiment(project.store, experiment)
        rows = triage(
            project.store,
            results(project.store, exp.id),
            results(project.store, exp.id, kind="rerun"),
        )
    if as_json:
        emit_json(rows)
        return
    console.print(table(f"Disagreements of {escape(exp.name)}",
                        ("case", "classification", "first", "re-run"), (
        (escape(r["key"]), r["classification"], escape(str(r["first_decision"])),
         escape(str(r["rerun_decision"])))
        for r in rows
    )))
