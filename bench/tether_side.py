"""The Tether side: no-op agents on a fresh SQLite store, executed by the local worker."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RUNS_PER_TASK, STEPS_PER_RUN, Counter, StepClock, Trial
from sqlalchemy import event, text

import tether
from tether.store.engine import WRITE

CLOCK = StepClock()


def _steps(ctx: tether.Context, n: int) -> None:
    record = CLOCK.samples.append
    for _ in range(n):
        t0 = time.perf_counter()
        with ctx.step("noop"):
            pass
        record(time.perf_counter() - t0)


@tether.agent(name="one")
def one(ctx: tether.Context) -> None:
    _steps(ctx, 1)


@tether.agent(name="ten")
def ten(ctx: tether.Context) -> None:
    _steps(ctx, 10)


@tether.agent(name="keyed")
def keyed(ctx: tether.Context) -> None:
    record = CLOCK.samples.append
    for i in range(10):
        t0 = time.perf_counter()
        with ctx.step("noop", key=KEYS[i]):
            pass
        record(time.perf_counter() - t0)


KEYS = [f"step-{i}" for i in range(10)]


@tether.agent(name="a", emits="a.done")
def chain_a(ctx: tether.Context) -> None:
    _steps(ctx, 1)


@tether.agent(name="b", subscribes="a.done", emits="b.done")
def chain_b(ctx: tether.Context) -> None:
    _steps(ctx, 1)


@tether.agent(name="c", subscribes="b.done")
def chain_c(ctx: tether.Context) -> None:
    _steps(ctx, 1)


AGENTS: dict[str, tuple[str, list[tether.Agent]]] = {
    # workload -> (the agent work is submitted to, the project's agents)
    "one": ("one", [one]),
    "ten": ("ten", [ten]),
    "chain": ("a", [chain_a, chain_b, chain_c]),
    "keyed": ("keyed", [keyed]),
}


def durability_check(work_dir: Path) -> dict[str, Any]:
    """What each mode actually sets on the SQLite connection (PRAGMA values)."""
    out: dict[str, Any] = {}
    for mode in ("full", "relaxed"):
        folder = tempfile.mkdtemp(prefix="tether-check-", dir=work_dir)
        try:
            with (
                tether.Project.load(folder, agents=[one], durability=mode) as project,
                project.store.engine.connect() as conn,
            ):
                journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            out[mode] = {
                "journal_mode": journal,
                "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync),
            }
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def trial(
    workload: str,
    *,
    tasks: int,
    concurrency: int,
    durability: str,
    work_dir: Path,
    round_no: int = 0,
) -> Trial:
    """Submit ``tasks`` tasks (timed apart), then time a worker running them all to idle."""
    root, agents = AGENTS[workload]
    folder = tempfile.mkdtemp(prefix=f"tether-{workload}-", dir=work_dir)
    try:
        with tether.Project.load(folder, agents=agents, durability=durability) as project:
            engine = project.store.engine  # opened and migrated here, outside the timings
            t0 = time.perf_counter()
            for i in range(tasks):
                project.submit(root, f"task-{i}")
            submit_seconds = time.perf_counter() - t0

            commits = Counter()

            def on_commit(conn: Any) -> None:
                if conn.get_execution_options().get(WRITE, False):
                    commits.add()

            event.listen(engine, "commit", on_commit)
            CLOCK.reset()
            worker = project.worker(concurrency=concurrency, poll_interval=0.005)
            t0 = time.perf_counter()
            stats = worker.run(until_idle=True)
            run_seconds = time.perf_counter() - t0
            event.remove(engine, "commit", on_commit)
            step_seconds = CLOCK.reset()

            runs = tasks * RUNS_PER_TASK[workload]
            _verify(project, workload, tasks, runs, stats)
        return Trial(
            system="tether",
            mode=durability,
            workload=workload,
            concurrency=concurrency,
            tasks=tasks,
            runs=runs,
            run_seconds=run_seconds,
            submit_seconds=submit_seconds,
            step_seconds=step_seconds,
            write_commits=commits.value,
            round=round_no,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _verify(
    project: tether.Project, workload: str, tasks: int, runs: int, stats: tether.WorkerStats
) -> None:
    """The benchmark counts only work that was recorded: every run, step and edge."""
    with project.store.engine.connect() as conn:
        succeeded = conn.execute(
            text("SELECT count(*) FROM runs WHERE status = 'succeeded'")
        ).scalar()
        step_rows = conn.execute(
            text("SELECT count(*) FROM steps WHERE status = 'succeeded'")
        ).scalar()
        edges = conn.execute(text("SELECT count(*) FROM triggers")).scalar()
    want_edges = 2 * tasks if workload == "chain" else 0
    want_steps = runs * STEPS_PER_RUN[workload]
    if (succeeded, step_rows, edges, stats.succeeded) != (runs, want_steps, want_edges, runs):
        raise RuntimeError(
            f"tether {workload}: expected {runs} succeeded runs, {want_steps} steps and "
            f"{want_edges} trigger edges; the store has {succeeded} runs, {step_rows} steps, "
            f"{edges} edges (worker counted {stats.succeeded} succeeded, {stats.failed} failed)"
        )
