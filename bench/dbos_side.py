"""The DBOS Transact side: the same no-op work as durable workflows on DBOS's SQLite defaults.

DBOS is configured with nothing but a name, a system database file (``sqlite:///...`` in a
fresh folder, as DBOS does by default in the current folder) and a quieter log level.
Workflows are called directly from ``concurrency`` client threads, which is how DBOS runs
them in a process (there is no separate submit step: calling a workflow records it). The
chain starts each next workflow from the previous one with ``DBOS.start_workflow``, which
DBOS records durably, the counterpart of a Tether trigger edge.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import RUNS_PER_TASK, Counter, StepClock, Trial
from dbos import DBOS, SetWorkflowID
from sqlalchemy import event
from sqlalchemy.engine import Engine

CLOCK = StepClock()
POLL = 0.005  # seconds between polls when waiting for a chain's last workflows


@DBOS.step()
def noop_step() -> None:
    return None


def _steps(n: int) -> None:
    record = CLOCK.samples.append
    for _ in range(n):
        t0 = time.perf_counter()
        noop_step()
        record(time.perf_counter() - t0)


@DBOS.workflow()
def one_wf(i: int) -> int:
    _steps(1)
    return i


@DBOS.workflow()
def ten_wf(i: int) -> int:
    _steps(10)
    return i


@DBOS.workflow()
def chain_a(prefix: str, i: int) -> None:
    _steps(1)
    with SetWorkflowID(f"{prefix}-b-{i}"):
        DBOS.start_workflow(chain_b, prefix, i)


@DBOS.workflow()
def chain_b(prefix: str, i: int) -> None:
    _steps(1)
    with SetWorkflowID(f"{prefix}-c-{i}"):
        DBOS.start_workflow(chain_c, prefix, i)


@DBOS.workflow()
def chain_c(prefix: str, i: int) -> None:
    _steps(1)


def _launch(folder: str) -> None:
    DBOS(
        config={
            "name": "tether-bench",
            "system_database_url": f"sqlite:///{folder}/dbos.sqlite",
            "log_level": "WARNING",
        }
    )
    DBOS.launch()


def _quiet() -> None:
    for name in ("dbos", "dbos._logger"):
        logging.getLogger(name).setLevel(logging.WARNING)


def durability_check(work_dir: Path) -> dict[str, Any]:
    """What DBOS's SQLite connections run with (its defaults: nothing set but a timeout)."""
    folder = tempfile.mkdtemp(prefix="dbos-check-", dir=work_dir)
    try:
        _quiet()
        _launch(folder)
        import sqlite3

        conn = sqlite3.connect(f"{folder}/dbos.sqlite")
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        conn.close()
        return {
            "journal_mode": journal,
            "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync),
        }
    finally:
        DBOS.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def trial(
    workload: str, *, tasks: int, concurrency: int, work_dir: Path, round_no: int = 0
) -> Trial:
    """Time ``tasks`` workflow calls from ``concurrency`` threads, until all are recorded."""
    folder = tempfile.mkdtemp(prefix=f"dbos-{workload}-", dir=work_dir)
    _quiet()
    _launch(folder)  # creates and migrates the system database, outside the timing
    try:
        commits = Counter()

        def on_commit(_conn: Any) -> None:
            commits.add()

        prefix = uuid.uuid4().hex[:8]
        if workload == "one":
            call: Any = one_wf
        elif workload == "ten":
            call = ten_wf
        else:

            def call(i: int) -> None:
                chain_a(prefix, i)

        CLOCK.reset()
        event.listen(Engine, "commit", on_commit)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(call, range(tasks)))
        if workload == "chain":
            # b and c run on DBOS's own executor threads; wait until every c is recorded.
            for stage in ("b", "c"):
                for i in range(tasks):
                    DBOS.retrieve_workflow(f"{prefix}-{stage}-{i}").get_result(
                        polling_interval_sec=POLL
                    )
        run_seconds = time.perf_counter() - t0
        event.remove(Engine, "commit", on_commit)
        step_seconds = CLOCK.reset()
        runs = tasks * RUNS_PER_TASK[workload]
        return Trial(
            system="dbos",
            mode="default",
            workload=workload,
            concurrency=concurrency,
            tasks=tasks,
            runs=runs,
            run_seconds=run_seconds,
            step_seconds=step_seconds,
            write_commits=commits.value,
            round=round_no,
        )
    finally:
        DBOS.destroy()
        shutil.rmtree(folder, ignore_errors=True)
