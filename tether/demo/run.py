"""``tether demo``: run the bundled multi-team example in a folder, with no set-up.

The demo starts a local HTTP service (:mod:`tether.demo.service`) that fails some calls
with 503, submits a few insurance applications to the KYC, risk and pricing agents, runs a
local worker until nothing is left, and prints what happened: retries, one terminal
failure whose downstream never ran, and completed quotes. Everything is recorded in the
folder's store (``.tether/tether.db`` by default), where ``tether tasks`` and
``tether show`` find it. Running it again is idempotent: nothing runs twice.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.engine import make_url

from tether.demo import agents as demo_agents
from tether.demo.service import DemoService, application, case_id
from tether.errors import ConfigError, NotFound
from tether.project import Project
from tether.store import Completion, FailureClass, Store, Task
from tether.store.schema import tasks as task_table

AGENT_ORDER = ("kyc", "risk", "pricing", "quote")
_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "running": "cyan",
    "queued": "yellow",
    "retrying": "yellow",
    "pending": "dim",
    "missing": "dim",
}


@dataclass(frozen=True)
class CaseResult:
    """How one case ended, read from the store."""

    case: str
    status: dict[str, str]
    """Each agent's task status for the case (``missing``: no such task)."""
    runs: dict[str, int]
    """Each agent's number of runs for the case (attempts, retries included)."""
    premium: float | None = None
    currency: str | None = None
    quote_id: str | None = None
    blocked: str | None = None
    """Why the case has no quote, briefly: ``kyc failed``."""
    why_no_quote: str | None = None
    """Why the case has no quote, in full: ``kyc failed (terminal): sanctions match: …;
    quote never ran: kyc.passed never fired (pricing.priced, risk.scored did)``."""

    @property
    def quoted(self) -> bool:
        return self.premium is not None


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did and found."""

    project_dir: Path
    store: str
    """Where the store is (a path for SQLite, else the URL without password)."""
    cases: tuple[CaseResult, ...]
    already_ran: bool
    """True when every case had been submitted before: nothing new was queued."""
    runs_executed: int
    """Runs the worker executed this time (0 on a repeat)."""
    retries_queued: int
    service_calls: int
    service_503s: int
    seconds: float
    commands: tuple[tuple[str, str], ...] = field(default=())
    """``(command, what it shows)`` pairs printed under "Look further"."""

    def case(self, key: str) -> CaseResult:
        """The result of one case, by key (``case-001``)."""
        for c in self.cases:
            if c.case == key:
                return c
        raise KeyError(key)


def run_demo(project_dir: Path, *, console: Console, cases: int = 3) -> DemoResult:
    """Run the bundled demo in ``project_dir`` and print its story and summary on ``console``.

    Args:
        project_dir: the folder to run in; its store (by default ``.tether/tether.db``
            there) receives the demo's tasks, runs, steps and triggers.
        console: where to print.
        cases: how many applications to submit (3 shows everything: two quotes, retries
            after 503s, and one sanctions hit).
    """
    if cases < 1:
        raise ValueError("the demo needs at least one case")
    started = time.monotonic()
    project_dir = Path(project_dir).expanduser().resolve()
    project_dir.mkdir(parents=True, exist_ok=True)
    keys = [case_id(n) for n in range(1, cases + 1)]
    _make_discoverable(project_dir)

    console.print(
        "[bold]Tether demo[/]: four teams' agents: [bold]kyc[/] (compliance), "
        "[bold]risk[/] (risk) and [bold]pricing[/] (pricing) each emit a trigger; "
        "[bold]quote[/] (sales) runs once all three fired for the same case."
    )
    with DemoService() as service, Project.load(project_dir, agents=demo_agents.AGENTS) as project:
        demo_agents.use_service(service.url)
        try:
            store = project.store
            _refuse_foreign_work(store)
            refs: dict[int, str] = {}
            created = 0
            for n, key in enumerate(keys, start=1):
                for root in demo_agents.ROOTS:
                    sub = project.submit(root.name, key, application(n))
                    refs[sub.task_id] = f"{root.name}/{key}"
                    created += sub.created
            already_ran = created == 0
            pending = store.pending()
            left = pending.queued + pending.running
            where = _where(store)
            if already_ran:
                console.print(
                    f"[yellow]The demo already ran here[/] ({escape(where)}). Submitting the "
                    "same work again is idempotent: nothing runs twice"
                    + (
                        f", and the {left} run(s) an earlier demo left unfinished run now."
                        if left
                        else ", so the summary below is read from the store."
                    )
                    + " (Delete .tether/ to start afresh.)"
                )
            else:
                console.print(
                    f"Submitted {len(keys)} application(s) to kyc, risk and pricing "
                    f"({', '.join(keys)}), recording to {escape(where)}."
                )
            if left:
                console.print(
                    f"A local service at {service.url} plays the outside world; it answers "
                    "some calls with 503.\n"
                )
            stats = _work(project, store, refs, console, service.url)
            service_stats = service.stats
        finally:
            demo_agents.use_service(None)

        results = tuple(_case_result(store, key) for key in keys)
        elapsed = time.monotonic() - started
        result = DemoResult(
            project_dir=project_dir,
            store=_where(store),
            cases=results,
            already_ran=already_ran,
            runs_executed=stats[0],
            retries_queued=stats[1],
            service_calls=service_stats.calls,
            service_503s=service_stats.unavailable,
            seconds=elapsed,
            commands=_commands(results),
        )
    _print_summary(console, result)
    return result


# -- running ---------------------------------------------------------------------------


def _make_discoverable(project_dir: Path) -> None:
    """Let later commands in this folder (``tether why-not``, ``graph``, ``worker``) find
    the demo's agents: a fresh folder gets a tether.toml naming their module."""
    config = project_dir / "tether.toml"
    if not config.exists():
        config.write_text(
            "# Written by `tether demo`: the demo's agents live in the tether package.\n"
            'agent_modules = ["tether.demo.agents"]\n'
        )


def _refuse_foreign_work(store: Store) -> None:
    """Refuse a store that holds other agents' tasks: the demo's worker runs until nothing
    is queued anywhere in the store, so it would claim (and fail) their runs too."""
    demo = [a.name for a in demo_agents.AGENTS]
    with store.engine.connect() as conn:
        others = list(
            conn.execute(
                select(task_table.c.agent)
                .where(task_table.c.agent.not_in(demo))
                .distinct()
                .limit(5)
            ).scalars()
        )
    if others:
        raise ConfigError(
            f"the store at {_where(store)} already holds tasks of other agents "
            f"({', '.join(sorted(others))}); run the demo in an empty folder"
        )


def _work(
    project: Project, store: Store, refs: dict[int, str], console: Console, url: str
) -> tuple[int, int]:
    """Run a worker until idle, narrating each recorded run. Returns (runs, retries)."""
    counts = {"runs": 0, "retries": 0, "failed": 0}

    def ref(task_id: int) -> str:
        if task_id not in refs:
            try:
                refs[task_id] = store.get_task(task_id).ref
            except NotFound:
                refs[task_id] = f"task {task_id}"
        return refs[task_id]

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("running the agents…", total=None)

        def on_complete(c: Completion) -> None:  # called on this thread (the worker's pump)
            counts["runs"] += 1
            progress.console.print(_narrate(c, ref(c.task_id), url))
            if c.retry_at is not None:
                counts["retries"] += 1
            elif not c.succeeded:
                counts["failed"] += 1
            progress.update(
                bar,
                description=f"running the agents… {counts['runs']} runs recorded, "
                f"{counts['retries']} retries queued, {counts['failed']} failed for good",
            )

        worker = project.worker(
            concurrency=4, poll_interval=0.02, lease_seconds=10.0, on_complete=on_complete
        )
        stats = worker.run(until_idle=True)
    if counts["runs"]:
        console.print()
    return stats.succeeded + stats.failed, stats.retries_queued


def _narrate(c: Completion, ref: str, url: str) -> str:
    who = f"{escape(ref):<17}"
    if c.succeeded:
        fired = list(dict.fromkeys(e.name for e in c.edges))
        then = f" → fired {', '.join(fired)}" if fired else ""
        return f"  [green]✓[/] {who} run {c.attempt} succeeded{escape(then)}"
    reason = escape(_short(c.failure_reason or "", url))
    if c.retry_at is not None:
        return (
            f"  [yellow]↻[/] {who} run {c.attempt} failed, retryable: {reason}"
            f" → run {c.attempt + 1} queued"
        )
    return f"  [red]✗[/] {who} run {c.attempt} failed, {c.failure_class}: {reason}"


_HTTPX_STATUS = re.compile(r"^HTTPStatusError: \w+ error '([^']*)' for url '([^']*)'")


def _short(reason: str, url: str) -> str:
    """A failure reason on one line, without the service's changing address (the store
    keeps it whole)."""
    line = reason.splitlines()[0] if reason else ""
    if url:
        line = line.replace(url, "")
    return _HTTPX_STATUS.sub(r"\1 from \2", line)


# -- reading the outcome ---------------------------------------------------------------


def _task(store: Store, agent: str, key: str) -> Task | None:
    try:
        return store.get_task(f"{agent}/{key}")
    except NotFound:
        return None


def _case_result(store: Store, key: str) -> CaseResult:
    tasks = {agent: _task(store, agent, key) for agent in AGENT_ORDER}
    status = {a: (t.status.value if t else "missing") for a, t in tasks.items()}
    runs = {a: (t.runs if t else 0) for a, t in tasks.items()}
    quote = tasks["quote"]
    if quote is not None and status["quote"] == "succeeded":
        output: Any = store.runs_of(quote.id, with_steps=False)[-1].output or {}
        return CaseResult(
            key,
            status,
            runs,
            premium=output.get("premium"),
            currency=output.get("currency"),
            quote_id=output.get("quote_id"),
        )
    short, full = _why_no_quote(store, tasks)
    return CaseResult(key, status, runs, blocked=short, why_no_quote=full)


def _why_no_quote(store: Store, tasks: dict[str, Task | None]) -> tuple[str, str]:
    """``(short, full)`` explanations of why a case has no quote."""
    failed: list[str] = []
    reasons: list[str] = []
    for agent in AGENT_ORDER:
        task = tasks[agent]
        if task is None or task.status.value != "failed":
            continue
        last = store.runs_of(task.id, with_steps=False)[-1]
        how = (
            f"gave up after {task.runs} runs"
            if last.failure_class == FailureClass.RETRYABLE
            else (last.failure_class.value if last.failure_class else "failed")
        )
        failed.append(agent)
        reasons.append(f"{agent} failed ({how}): {_short(last.failure_reason or '', '')}")
    quote = tasks["quote"]
    needs = demo_agents.quote.subscribes
    if quote is None or quote.runs == 0:
        fired = {t.name for t in store.triggers_in(quote.id)} if quote is not None else set()
        missing = [name for name in needs if name not in fired]
        reasons.append(
            f"quote never ran: {', '.join(missing)} never fired"
            + (f" ({', '.join(sorted(fired))} did)" if fired else "")
        )
    elif quote.status.value != "failed":  # a failed quote is explained above
        reasons.append(f"quote is {quote.status.value}")
    short = f"{failed[0]} failed" if failed else "not finished"
    return short, "; ".join(reasons)


def _where(store: Store) -> str:
    """The store's place for people: a path (relative when under the current folder)."""
    url = make_url(store.url)
    if url.get_backend_name() == "sqlite" and url.database:
        path = Path(url.database).resolve()
        try:
            return str(path.relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)
    return url.render_as_string(hide_password=True)


# -- printing --------------------------------------------------------------------------


def _cell(status: str, runs: int) -> str:
    style = _STYLE.get(status, "")
    word = f"[{style}]{status}[/]" if style else status
    if status == "missing":
        return word
    if runs == 0:
        return f"{word}\n[dim]never ran[/]"
    return f"{word}\n[dim]{runs} run{'s' if runs != 1 else ''}[/]"


def _summary_table(cases: Sequence[CaseResult]) -> Table:
    table = Table(title="Summary", title_justify="left", show_lines=True)
    table.add_column("case", no_wrap=True)
    for agent, team in zip(AGENT_ORDER, ("compliance", "risk", "pricing", "sales"), strict=True):
        table.add_column(f"{agent}\n[dim]{team}[/]", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    for c in cases:
        if c.quoted:
            outcome = (
                f"[green]{escape(c.currency or '')} {c.premium:,.2f}[/]\n"
                f"[dim]quote {escape(c.quote_id or '')}[/]"
            )
        else:
            outcome = f"[red]no quote[/]\n[dim]{escape(c.blocked or '')}[/]"
        table.add_row(c.case, *(_cell(c.status[a], c.runs[a]) for a in AGENT_ORDER), outcome)
    return table


def _commands(cases: Sequence[CaseResult]) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = [("tether tasks", "every task, its status and its runs")]
    quoted = [c for c in cases if c.quoted]
    if quoted:
        out.append(
            (
                f"tether show quote/{quoted[0].case}",
                "a quote: its steps, and the three triggers that started it",
            )
        )
    retried = [
        (c.runs[a], a, c.case)
        for c in cases
        for a in AGENT_ORDER
        if c.runs[a] > 1 and c.status[a] == "succeeded"
    ]
    if retried:
        n, agent, key = max(retried, key=lambda r: r[0])
        out.append(
            (
                f"tether show {agent}/{key}",
                f"{n} runs: failed on 503s, retried with backoff, then succeeded",
            )
        )
    if quoted:
        out.append(
            (
                f"tether why quote/{quoted[0].case}",
                "why this quote: the upstream runs, triggers and steps behind it",
            )
        )
    failed = [c for c in cases if c.status["kyc"] == "failed"]
    if failed:
        out.append(
            (
                f"tether show kyc/{failed[0].case}",
                "the terminal failure: not retried, and nothing downstream ran",
            )
        )
        out.append(
            (
                f"tether why-not quote {failed[0].case}",
                "why no quote: the trigger that never fired, and the failure behind it",
            )
        )
    out.append(("tether tasks --status failed --json", "the failures, as JSON for a program"))
    return tuple(out)


def _print_summary(console: Console, result: DemoResult) -> None:
    console.print(_summary_table(result.cases))
    for c in result.cases:
        if not c.quoted:
            console.print(f"[bold]{c.case}[/]: {escape(c.why_no_quote or '')}.")
    quoted = sum(c.quoted for c in result.cases)
    if result.already_ran and result.runs_executed == 0:
        console.print(
            f"{quoted} of {len(result.cases)} cases quoted. Nothing ran this time "
            f"({result.seconds:.1f} s); the store already held every run."
        )
    else:
        console.print(
            f"{quoted} of {len(result.cases)} cases quoted. {result.runs_executed} runs in "
            f"{result.seconds:.1f} s; the service answered {result.service_calls} calls, "
            f"{result.service_503s} of them with 503, and the harness retried "
            f"{result.retries_queued} runs."
        )
    console.print(f"Everything is recorded in {escape(result.store)}.\n")
    here = Path.cwd().resolve()
    where = "" if result.project_dir == here else f" (from {escape(str(result.project_dir))})"
    console.print(f"[bold]Look further[/]{where}:")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="cyan")
    grid.add_column(style="dim")
    for cmd, what in result.commands:
        grid.add_row(escape(cmd), escape(what))
    console.print(Padding(grid, (0, 0, 0, 2)))
