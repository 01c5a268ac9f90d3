"""Benchmark provenance on a large store: ``why`` ten edges deep, and ``why-not``.

    python bench/provenance.py                      # 1,000,000 tasks on SQLite and PostgreSQL
    python bench/provenance.py --tasks 100000       # smaller and quicker
    python bench/provenance.py --db sqlite          # one database only

The store is filled directly (SQLAlchemy Core executemany on SQLite, COPY on PostgreSQL)
with chains of eleven agents ``c0 -> c1 -> ... -> c10``: every task has a succeeded run
(every tenth one after a retryable failure), two steps per run, and the trigger row to the
next agent of its chain, so ``c10/KEY`` is ten edges deep. Beside them, broken chains whose
root failed terminally after two retryable failures, and keys no root was ever submitted for:
``why-not c10/KEY`` walks ten levels up to the root cause in both.

Each query is timed through the Python API (what ``tether why`` / ``why-not`` call) on
random tasks, with the schema's indexes, then without the index each one leans on (dropped
for the measurement and made again). PostgreSQL at 127.0.0.1:5432 (trust auth, user
``postgres``; ``--pg-url`` for another): the bench creates its own database and drops it.
Results: docs/benchmarks.md, "Provenance".
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

import tether
from tether.graph import Graph, build, task_graph, why, why_not
from tether.store import Store
from tether.store.schema import metadata

console = Console(width=150)

DEPTH = 10
"""Edges from a chain's root to its last task."""
BROKEN = 100
"""Chains whose root failed terminally, and keys never submitted at all (each)."""
BATCH = 50_000
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"

INDEXES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # name: (table, what leans on it, columns)
    "ix_triggers_downstream_task_id_name": ("triggers", "why", ("downstream_task_id", "name")),
    "ix_runs_task_id_status": ("runs", "why-not", ("task_id", "status")),
}
"""The indexes provenance leans on, dropped one at a time for the "without" measurement."""


def _chain_agents() -> Graph:
    def make(i: int) -> tether.Agent:
        def fn(ctx: tether.Context) -> None:
            return None

        fn.__name__ = f"c{i}"
        return tether.agent(
            subscribes=f"c{i - 1}.done" if i else None,
            emits=f"c{i}.done" if i < DEPTH else None,
        )(fn)

    return build([make(i) for i in range(DEPTH + 1)])


# -- the data ------------------------------------------------------------------------------


@dataclass
class Plan:
    """How many rows of each kind, and the ids of the special tasks."""

    tasks: int
    chains: int
    pads: int
    extra_runs: int

    @property
    def levels(self) -> int:
        return DEPTH + 1

    def task_id(self, level: int, chain: int) -> int:
        return level * self.chains + chain + 1

    def run_id(self, task_id: int) -> int:
        """The succeeded run of a chain task: after every retryable failed run."""
        return task_id + self.extra_runs


def plan(n_tasks: int) -> Plan:
    """Chains of eleven tasks, the broken roots, and root tasks to pad to ``n_tasks``."""
    chains = max(1, (n_tasks - BROKEN) // (DEPTH + 1))
    pads = max(0, n_tasks - BROKEN - chains * (DEPTH + 1))
    chain_tasks = chains * (DEPTH + 1)
    return Plan(tasks=chain_tasks + pads + BROKEN, chains=chains, pads=pads,
                extra_runs=(chain_tasks + 9) // 10)


def key(chain: int) -> str:
    return f"case-{chain:07d}"


T0 = 1_700_000_000.0


def rows(p: Plan) -> dict[str, Iterator[tuple[Any, ...]]]:
    """Every row to insert, per table, in column order of :data:`COLUMNS`."""
    n_chain_tasks = p.chains * p.levels

    def tasks_() -> Iterator[tuple[Any, ...]]:
        for level in range(p.levels):
            for c in range(p.chains):
                yield (p.task_id(level, c), f"c{level}", key(c), T0 + level * 60 + c * 1e-3)
        for i in range(p.pads):
            yield (n_chain_tasks + i + 1, "c0", f"pad-{i:07d}", T0 + i * 1e-3)
        for b in range(BROKEN):
            yield (n_chain_tasks + p.pads + b + 1, "c0", f"broken-{b:03d}", T0)

    def inputs_() -> Iterator[tuple[Any, ...]]:
        for c in range(p.chains):
            yield (c + 1, p.task_id(0, c), 1, json.dumps({"case": c}), T0)

    def runs_() -> Iterator[tuple[Any, ...]]:
        # Retryable failures first (ids 1..extra_runs) so each task's latest run succeeded.
        for i in range(p.extra_runs):
            tid = i * 10 + 1
            t = T0 + (tid - 1) // p.chains * 60
            yield (i + 1, tid, 1, "submitted", "failed", "retryable",
                   "HTTPStatusError: 503 Service Unavailable", None, t, t, t, t + 0.1)
        for level in range(p.levels):
            for c in range(p.chains):
                tid = p.task_id(level, c)
                t = T0 + level * 60 + c * 1e-3
                attempt = 2 if (tid - 1) % 10 == 0 else 1
                reason = "retry" if attempt == 2 else ("trigger" if level else "submitted")
                yield (p.run_id(tid), tid, attempt, reason, "succeeded", None, None,
                       json.dumps({"level": level, "score": c % 97}), t, t, t + 1, t + 2)
        rid = n_chain_tasks + p.extra_runs
        for i in range(p.pads):
            rid += 1
            yield (rid, n_chain_tasks + i + 1, 1, "submitted", "succeeded", None, None,
                   json.dumps({"pad": i}), T0, T0, T0 + 1, T0 + 2)
        for b in range(BROKEN):
            tid = n_chain_tasks + p.pads + b + 1
            for attempt in (1, 2, 3):
                rid += 1
                terminal = attempt == 3
                yield (rid, tid, attempt, "submitted" if attempt == 1 else "retry", "failed",
                       "terminal" if terminal else "retryable",
                       "sanctions match" if terminal else "ConnectError: connection refused",
                       None, T0, T0, T0 + attempt, T0 + attempt + 0.5)

    def steps_() -> Iterator[tuple[Any, ...]]:
        sid = 0
        for rid in range(1, n_chain_tasks + p.extra_runs + 1):
            for seq, name in ((1, "fetch record"), (2, "decide")):
                sid += 1
                yield (sid, rid, seq, name, None, json.dumps({"run": rid}),
                       json.dumps({"ok": True, "seq": seq}), "succeeded", None, T0, T0 + 0.5)

    def triggers_() -> Iterator[tuple[Any, ...]]:
        tid = 0
        for level in range(1, p.levels):
            for c in range(p.chains):
                tid += 1
                up = p.task_id(level - 1, c)
                yield (tid, f"c{level - 1}.done", up, p.run_id(up), p.task_id(level, c),
                       T0 + (level - 1) * 60 + c * 1e-3 + 2)

    return {"tasks": tasks_(), "task_inputs": inputs_(), "runs": runs_(), "steps": steps_(),
            "triggers": triggers_()}


COLUMNS = {
    "tasks": ("id", "agent", "key", "created_at"),
    "task_inputs": ("id", "task_id", "seq", "data", "received_at"),
    "runs": ("id", "task_id", "attempt", "reason", "status", "failure_class", "failure_reason",
             "output", "created_at", "available_at", "started_at", "finished_at"),
    "steps": ("id", "run_id", "seq", "name", "key", "input", "output", "status", "error",
              "started_at", "finished_at"),
    "triggers": ("id", "name", "upstream_task_id", "upstream_run_id", "downstream_task_id",
                 "created_at"),
}


def _check_columns() -> None:
    """Fail clearly if the schema grew a required column this bench does not fill."""
    for table, cols in COLUMNS.items():
        for col in metadata.tables[table].columns:
            required = not col.nullable and col.server_default is None and col.default is None
            if required and col.name not in cols and not col.primary_key:
                raise SystemExit(f"bench/provenance.py: fill {table}.{col.name} (new column)")


def _batches(it: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in it:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def fill_sqlite(engine: Engine, p: Plan) -> int:
    """Bulk insert with the driver's executemany in big batches, one transaction."""
    n = 0
    raw = engine.raw_connection()
    try:
        dbapi: Any = raw.driver_connection
        cur = dbapi.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        cur.execute("BEGIN")
        for table, it in rows(p).items():
            cols = COLUMNS[table]
            sql = (f"INSERT INTO {table} ({', '.join(cols)}) "
                   f"VALUES ({', '.join('?' * len(cols))})")
            for batch in _batches(it, BATCH):
                cur.executemany(sql, batch)
                n += len(batch)
        cur.execute("COMMIT")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()
    finally:
        raw.close()
    return n


def fill_postgres(engine: Engine, p: Plan) -> int:
    """Bulk insert with COPY, then point the id sequences past the rows."""
    n = 0
    raw = engine.raw_connection()
    try:
        dbapi: Any = raw.driver_connection
        with dbapi.cursor() as cur:
            for table, it in rows(p).items():
                cols = COLUMNS[table]
                with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in it:
                        copy.write_row(row)
                        n += 1
            for table in COLUMNS:
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
            dbapi.commit()
            dbapi.autocommit = True
            cur.execute("ANALYZE")
            dbapi.autocommit = False
    finally:
        raw.close()
    return n


# -- timing --------------------------------------------------------------------------------


@dataclass
class Timing:
    """One measured query: milliseconds per call."""

    db: str
    indexes: str
    query: str
    ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def p95(self) -> float:
        s = sorted(self.ms)
        return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


def _time(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm the connection pool and the plan cache
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def measure(store: Store, graph: Graph, p: Plan, db: str, label: str, repeat: int,
            only: Sequence[str] = ("why", "why-not failed", "why-not missing", "graph --task"),
            ) -> list[Timing]:
    rnd = random.Random(7)
    chains = [rnd.randrange(p.chains) for _ in range(repeat + 1)]
    broken = [rnd.randrange(BROKEN) for _ in range(repeat + 1)]
    it = {"why": iter(chains), "why-not failed": iter(broken), "why-not missing": iter(broken),
          "graph --task": iter(chains)}

    def q_why() -> None:
        w = why(store, f"c{DEPTH}/{key(next(it['why']))}")
        assert w.depth == DEPTH, w.depth

    def q_failed() -> None:
        w = why_not(store, graph, f"c{DEPTH}", f"broken-{next(it['why-not failed']):03d}")
        assert w.root_causes[0].reason == "sanctions match", w.root_causes

    def q_missing() -> None:
        w = why_not(store, graph, f"c{DEPTH}", f"missing-{next(it['why-not missing']):03d}")
        assert w.root_causes[0].state == "never submitted", w.root_causes

    def q_graph() -> None:
        g = task_graph(store, f"c{DEPTH // 2}/{key(next(it['graph --task']))}")
        assert len(g.tasks) == DEPTH + 1, len(g.tasks)

    fns = {"why": q_why, "why-not failed": q_failed, "why-not missing": q_missing,
           "graph --task": q_graph}
    return [Timing(db, label, q, _time(fns[q], repeat)) for q in only]


def _drop_create(engine: Engine, name: str, drop: bool) -> float:
    table, _, cols = INDEXES[name]
    t = time.perf_counter()
    with engine.begin() as conn:
        if drop:
            conn.execute(text(f"DROP INDEX {name}"))
        else:
            conn.execute(text(f"CREATE INDEX {name} ON {table} ({', '.join(cols)})"))
            conn.execute(text(f"ANALYZE {table}"))
    return time.perf_counter() - t


def bench_one(db: str, url: str, p: Plan, repeat: int) -> list[Timing]:
    graph = _chain_agents()
    store = Store.open(url)
    try:
        t = time.perf_counter()
        fill = fill_sqlite if db == "sqlite" else fill_postgres
        n = fill(store.engine, p)
        console.print(f"{db}: filled {n:,} rows ({p.tasks:,} tasks) in "
                      f"{time.perf_counter() - t:.0f} s")
        out = measure(store, graph, p, db, "schema", repeat)
        for name, (_table, query, _cols) in INDEXES.items():
            _drop_create(store.engine, name, drop=True)
            queries = (["why", "graph --task"] if query == "why"
                       else ["why-not failed", "why-not missing"])
            out += measure(store, graph, p, db, f"without {name}", max(3, repeat // 10), queries)
            _drop_create(store.engine, name, drop=False)
        return out
    finally:
        store.close()


def _pg_database(server: str) -> tuple[Engine, str, str]:
    base = make_url(server)
    if base.drivername == "postgresql":
        base = base.set(drivername="postgresql+psycopg")
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"tether_bench_provenance_{int(time.time())}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return admin, name, base.set(database=name).render_as_string(hide_password=False)


def report(timings: list[Timing], p: Plan) -> None:
    table = Table(title=f"Provenance on {p.tasks:,} tasks (ms per call; target < 50)",
                  title_justify="left")
    for col in ("database", "indexes", "query", "median", "p95", "calls"):
        table.add_column(col, justify="right" if col in ("median", "p95", "calls") else "left")
    for t in timings:
        table.add_row(t.db, t.indexes, t.query, f"{t.median:.2f}", f"{t.p95:.2f}",
                      str(len(t.ms)))
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1_000_000, help="tasks in the store")
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--pg-url", default=DEFAULT_PG, help="a PostgreSQL server (any database)")
    ap.add_argument("--repeat", type=int, default=50, help="timed calls per query")
    ap.add_argument("--json", type=Path, help="also write the timings here")
    args = ap.parse_args(argv)
    _check_columns()
    p = plan(args.tasks)
    timings: list[Timing] = []
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory(prefix="tether-bench-prov-") as tmp:
            timings += bench_one("sqlite", f"sqlite:///{tmp}/tether.db", p, args.repeat)
    if args.db in ("postgresql", "both"):
        admin, name, url = _pg_database(args.pg_url)
        try:
            timings += bench_one("postgresql", url, p, args.repeat)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    report(timings, p)
    if args.json:
        args.json.write_text(json.dumps(
            [{"db": t.db, "indexes": t.indexes, "query": t.query, "median_ms": t.median,
              "p95_ms": t.p95, "ms": t.ms} for t in timings], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
