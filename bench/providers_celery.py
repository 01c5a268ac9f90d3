"""Benchmark the Celery provider against the same work written directly against Celery.

    python bench/providers_celery.py               # the full run (about 2 minutes on 2 cores)
    python bench/providers_celery.py --quick       # a smoke run (about 40 seconds)
    python bench/providers_celery.py --json out.json

The work: a chain of three no-op agents ``a -> b -> c`` linked by triggers (three runs per
chain). Both sides use the same broker (Redis), the same Celery settings (late
acknowledgement, prefetch 1, JSON, thread pool, ``--concurrency`` threads per process) and
worker processes started the same way, side by side in one run:

- **plain Celery**: tasks ``a``, ``b``, ``c``; each publishes the next (no harness, no
  database). ``c`` pushes its finish time to a Redis list, which is how the bench learns a
  chain ended.
- **Tether on Celery**: ``tether worker --provider celery`` processes on a PostgreSQL store
  (full durability: every commit synced). Chains are submitted with ``Project.submit``,
  one commit each (``--submit-many``: a throughput burst with one
  ``Project.submit_many``, a transaction per 200 chains); a chain ended when ``c``'s run
  is recorded as succeeded (its ``finished_at``).
- **Tether's local worker** on the same store, for reference: what the harness itself costs
  without Celery.

Measured per system: **throughput** (a burst of ``--chains`` chains submitted at once, with
workers idle and warm: each system first runs a burst of ``WARM_CHAINS``; runs per second
from the first submission to the last ``c`` finished) for 1, 2 and 4 worker processes;
and **latency** (chains submitted one at a time,
each after the previous one ended; median and p99 of submission -> ``c`` finished) with one
worker process. Tether's latency is given at the default dispatcher poll interval (0.2 s:
the wait before a submitted root is published) and at 0.02 s. **CPU per run** counts the
worker processes, Redis, the PostgreSQL backends of the bench's database and the bench's
own process (not other jobs on the machine, nor PostgreSQL's background writers); each
trial's line, and ``--json`` (``cpu_ms_per_run_parts``), also split it into those four
parts. Results go to the terminal as tables; ``--json`` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tether  # noqa: E402
from tether.providers.celery import make_app  # noqa: E402

console = Console() if sys.stdout.isatty() else Console(width=130)

SYSTEMS = ("celery", "celery+pg", "tether", "tether-local")
"""The systems a run can compare (``--systems``), as each names itself."""

WARM_CHAINS = 20
"""A burst of chains every system runs after starting and before it is measured: the
trials measure a warm worker, not its first statements (compiled, prepared) or
connections."""

AGENTS = textwrap.dedent(
    """
    import os
    import time

    import tether

    # --work-ms: each agent waits this long, as on a tool or model call (0: no-op).
    WORK = float(os.environ.get("BENCH_WORK_MS", "0")) / 1e3


    @tether.agent(emits="a.done")
    def a(ctx):
        if WORK:
            time.sleep(WORK)


    @tether.agent(subscribes="a.done", emits="b.done")
    def b(ctx):
        if WORK:
            time.sleep(WORK)


    @tether.agent(subscribes="b.done")
    def c(ctx):
        if WORK:
            time.sleep(WORK)
    """
)


@dataclass
class Result:
    """One measurement."""

    system: str  # "celery" (plain) or "tether"
    kind: str  # "throughput" or "latency"
    workers: int
    chains: int
    seconds: float
    latencies: list[float]
    poll: float | None = None
    cpu_seconds: float = math.nan
    """CPU time the work took during the trial: the workers, Redis, the PostgreSQL
    backends of the bench's database and the bench itself (see :class:`CpuMeter`)."""
    cpu_parts: dict[str, float] = field(default_factory=dict)
    """``cpu_seconds`` by part: ``workers``, ``postgres``, ``redis`` and ``bench``."""

    @property
    def runs_per_second(self) -> float:
        return 3 * self.chains / self.seconds

    @property
    def cpu_ms_per_run(self) -> float:
        return self.cpu_seconds / (3 * self.chains) * 1e3

    @property
    def cpu_ms_per_run_parts(self) -> dict[str, float]:
        """:attr:`cpu_ms_per_run` by part (see :attr:`cpu_parts`)."""
        return {part: seconds / (3 * self.chains) * 1e3
                for part, seconds in self.cpu_parts.items()}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["runs_per_second"] = self.runs_per_second
        data["cpu_ms_per_run"] = self.cpu_ms_per_run
        data["cpu_ms_per_run_parts"] = self.cpu_ms_per_run_parts
        if self.latencies:
            data["latency_ms_median"] = median(self.latencies) * 1e3
            data["latency_ms_p99"] = percentile(self.latencies, 99) * 1e3
        return data


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "redis-server":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class CpuMeter:
    """CPU time of the processes doing the work — the workers, Redis, the PostgreSQL
    backends serving this bench's database, and the bench itself — so that other jobs on
    a shared machine do not count."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.start: dict[int, float] = {}
        self.self_start = 0.0

    def __enter__(self) -> CpuMeter:
        self.start = {pid: process_cpu(pid) for pid in self.pids()}
        self.self_start = _self_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        end = {pid: process_cpu(pid) for pid in {*self.start, *self.pids()}}
        self.parts = {"workers": 0.0, "postgres": 0.0, "redis": 0.0,
                      "bench": _self_cpu() - self.self_start}
        for pid, seconds in end.items():
            self.parts[_part(pid)] += seconds - self.start.get(pid, 0.0)
        self.seconds = sum(self.parts.values())


def _part(pid: int) -> str:
    """Which part of the work process ``pid`` is (by its command name)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "workers"  # gone: only workers stop during a trial
    if comm == "redis-server":
        return "redis"
    return "postgres" if comm.startswith("postgres") else "workers"


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


# -- plain Celery ------------------------------------------------------------------------


def plain_app(broker: str, queue: str, pg_url: str | None = None, work: float = 0.0) -> Any:
    """Tasks a -> b -> c written directly against Celery, with the provider's settings.

    With ``pg_url`` each task first records its result durably — one committed INSERT
    into ``plain_results`` on PostgreSQL, what a team using Celery alone would need to know
    later what ran and what it returned — through a pool, as a real service would.
    """
    import redis as redis_lib

    app = make_app(broker, queue)
    done = redis_lib.Redis.from_url(broker)
    engine = create_engine(_psycopg(pg_url), pool_size=8) if pg_url else None
    record = text("INSERT INTO plain_results (chain, agent, output, finished_at) "
                  "VALUES (:chain, :agent, NULL, :at)")

    def durable(chain: int, agent: str) -> None:
        if work:
            time.sleep(work)  # the agent's own work, as in the Tether agents
        if engine is not None:
            with engine.begin() as conn:
                conn.execute(record, {"chain": chain, "agent": agent, "at": time.time()})

    @app.task(name="bench.a", shared=False)
    def a(chain: int, t0: float) -> None:
        durable(chain, "a")
        app.send_task("bench.b", args=(chain, t0), queue=queue)

    @app.task(name="bench.b", shared=False)
    def b(chain: int, t0: float) -> None:
        durable(chain, "b")
        app.send_task("bench.c", args=(chain, t0), queue=queue)

    @app.task(name="bench.c", shared=False)
    def c(chain: int, t0: float) -> None:
        durable(chain, "c")
        done.rpush(f"bench:done:{queue}", json.dumps([chain, t0, time.time()]))

    return app


def plain_worker(broker: str, queue: str, concurrency: int, pg_url: str = "",
                 work_ms: str = "0") -> None:
    """A plain `celery worker` process (thread pool) for the tasks above."""
    app = plain_app(broker, queue, pg_url or None, float(work_ms) / 1e3)
    app.worker_main([
        "worker", "--pool=threads", f"--concurrency={concurrency}", f"--queues={queue}",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
    ])


class PlainCelery:
    """Drives plain Celery worker processes (``pg_url``: each task records its result in
    PostgreSQL)."""

    def __init__(self, broker: str, concurrency: int, pg_url: str | None = None,
                 work_ms: float = 0.0) -> None:
        import redis as redis_lib

        self.work_ms = work_ms
        self.system = "celery+pg" if pg_url else "celery"
        self.broker = broker
        self.concurrency = concurrency
        self.pg_url = pg_url
        self.redis = redis_lib.Redis.from_url(broker)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._fresh_queue()

    def _fresh_queue(self) -> None:
        # A new queue for every start: nothing a previous start left (a chain published
        # twice by the warm-up, say) can be counted by the next one.
        self.queue = f"bench-plain-{os.getpid()}-{secrets.token_hex(3)}"
        self.app = plain_app(self.broker, self.queue)
        self.done_key = f"bench:done:{self.queue}"

    def start(self, workers: int) -> None:
        self._fresh_queue()
        if self.pg_url:
            engine = create_engine(_psycopg(self.pg_url))
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS plain_results"))
                conn.execute(text(
                    "CREATE TABLE plain_results (id BIGSERIAL PRIMARY KEY, chain BIGINT, "
                    "agent TEXT, output JSONB, finished_at DOUBLE PRECISION)"))
            engine.dispose()
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "plain-worker", self.broker, self.queue,
                 str(self.concurrency), self.pg_url or "", str(self.work_ms)],
                stdout=subprocess.DEVNULL,
                # Celery warns that the worker runs as root (as on this bench machine).
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            for _ in range(workers)
        ]
        self._warm()
        self.run_chains(WARM_CHAINS)

    def _warm(self) -> None:
        """One chain end to end: every process has connected and consumes. Worker
        processes starting on a busy machine may miss the first message (published before
        any of them bound the queue), so it is published again until one ends."""
        self.redis.delete(self.done_key)
        for _ in range(9):  # short waits, as in wait_one
            self.publish(0)
            if self.redis.blpop([self.done_key], timeout=10) is not None:
                time.sleep(0.5)  # the chains published twice finish too
                self.redis.delete(self.done_key)
                return
        raise RuntimeError("plain Celery: the workers did not start within 90 s")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs] + redis_pids() + (
            pg_backends(self.pg_url) if self.pg_url else [])

    def stop(self) -> None:
        stop_all(self.procs)
        self.redis.delete(self.done_key)
        delete_queue(self.broker, self.queue)

    def publish(self, chain: int) -> float:
        t0 = time.time()
        self.app.send_task("bench.a", args=(chain, t0), queue=self.queue)
        return t0

    def run_chains(self, n: int) -> tuple[float, list[float]]:
        """Publish n chains at once; (seconds until the last ended, latencies)."""
        self.redis.delete(self.done_key)
        start = time.time()
        with self.app.producer_or_acquire() as producer:
            for i in range(n):
                self.app.send_task("bench.a", args=(i, time.time()), queue=self.queue,
                                   producer=producer)
        ends = [self.wait_one() for _ in range(n)]
        return max(end for _, end in ends) - start, [end - t0 for t0, end in ends]

    def wait_one(self) -> tuple[float, float]:
        popped = None
        for _ in range(6):  # short waits: the client's socket times out on long ones
            popped = self.redis.blpop([self.done_key], timeout=10)
            if popped is not None:
                break
        if popped is None:
            raise RuntimeError("plain Celery: a chain did not finish within 60 s")
        _chain, t0, end = json.loads(popped[1])
        return t0, end

    def latency(self, n: int) -> list[float]:
        self.redis.delete(self.done_key)
        out = []
        for i in range(n):
            self.publish(i)
            t0, end = self.wait_one()
            out.append(end - t0)
        return out


# -- Tether on Celery --------------------------------------------------------------------


class TetherWorkers:
    """Drives `tether worker --provider PROVIDER` processes on a PostgreSQL store."""

    def __init__(self, provider: str, broker: str, pg_url: str, concurrency: int,
                 folder: Path, work_ms: float = 0.0, submit_many: bool = False) -> None:
        self.provider = provider
        self.submit_many = submit_many
        self.work_ms = work_ms
        self.system = "tether" if provider == "celery" else f"tether-{provider}"
        self.broker = broker
        self.pg_url = pg_url
        self.concurrency = concurrency
        self.folder = folder
        (folder / "agents").mkdir(parents=True, exist_ok=True)
        (folder / "agents" / "chain.py").write_text(AGENTS)
        self.queue = f"bench-tether-{secrets.token_hex(3)}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.project: tether.Project | None = None
        self.engine = create_engine(_psycopg(pg_url))
        self.seq = 0

    def start(self, workers: int, poll: float = 0.2) -> None:
        self.engine.dispose()  # the reset ends every session on the database
        reset_schema(self.pg_url)
        self.project = tether.Project.load(self.folder, database_url=self.pg_url)
        self.project.store  # noqa: B018 - migrate before the workers start
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        env.update(
            TETHER_PROJECT_DIR=str(self.folder), TETHER_DATABASE_URL=self.pg_url,
            TETHER_BROKER_URL=self.broker, TETHER_TASK_QUEUE=self.queue,
            TETHER_PROVIDER=self.provider, TETHER_CONCURRENCY=str(self.concurrency),
            TETHER_POLL_INTERVAL=str(poll), BENCH_WORK_MS=str(self.work_ms),
        )
        # Their stderr ("stopping: ..." when stopped) goes to a file, kept for failures.
        with (self.folder / f"workers-{self.system}.log").open("ab") as log:
            self.procs = [
                subprocess.Popen([sys.executable, "-m", "tether", "worker", "--quiet"],
                                 cwd=self.folder, env=env, stdout=subprocess.DEVNULL,
                                 stderr=log)
                for _ in range(workers)
            ]
        self.latency(1)  # the workers have started and execute chains
        self.run_chains(WARM_CHAINS)

    def pids(self) -> list[int]:
        with self.engine.connect() as conn:
            backends = conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )).scalars().all()
        return [p.pid for p in self.procs] + redis_pids() + list(backends)

    def stop(self) -> None:
        stop_all(self.procs)
        if self.project is not None:
            self.project.close()
            self.project = None
        if self.provider == "celery":
            delete_queue(self.broker, self.queue)

    def _submit(self) -> tuple[str, float]:
        assert self.project is not None
        self.seq += 1
        key = f"k{self.seq}"
        t0 = time.time()
        self.project.submit("a", key)
        return key, t0

    def _busy(self) -> bool:
        """Whether any run is queued or running (stops at the first, on the queue's index;
        ``Store.pending`` would count every queued run on each pass)."""
        with self.engine.connect() as conn:
            return bool(conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE status IN ('queued', 'running'))"
            )).scalar())

    def _finished(self, keys: Sequence[str]) -> dict[str, float]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT t.key, r.finished_at FROM tasks t JOIN runs r ON r.task_id = t.id "
                    "WHERE t.agent = 'c' AND t.key = ANY(:keys) AND r.status = 'succeeded'"
                ),
                {"keys": list(keys)},
            ).all()
        return {key: finished for key, finished in rows}

    def run_chains(self, n: int) -> tuple[float, list[float]]:
        assert self.project is not None
        start = time.time()
        if not self.submit_many:  # one transaction (one synced commit) per chain
            submitted = dict(self._submit() for _ in range(n))
        else:  # the burst as one call: a transaction per 200 chains
            keys = [f"k{self.seq + i}" for i in range(1, n + 1)]
            self.seq += n
            self.project.submit_many([("a", key) for key in keys])
            submitted = dict.fromkeys(keys, start)
        deadline = time.monotonic() + 120
        finished: dict[str, float] = {}
        while len(finished) < n:
            # The times come from the store (finished_at), so when this looks does not
            # change them. While a run is queued or running (a chain's next run is
            # written in the transaction that ends the one before), an index probe says
            # so; the chains' times are read once none is. Reading them every pass cost
            # the database up to 3.7 ms a pass, counted against Tether.
            time.sleep(0.1)
            if not self._busy():
                finished |= self._finished([k for k in submitted if k not in finished])
            if time.monotonic() > deadline:
                raise RuntimeError(f"tether: {n - len(finished)} chains unfinished after 120 s")
        return max(finished.values()) - start, [finished[k] - submitted[k] for k in submitted]

    def latency(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            key, t0 = self._submit()
            deadline = time.monotonic() + 60
            while not (done := self._finished([key])):
                if time.monotonic() > deadline:
                    raise RuntimeError("tether: a chain did not finish within 60 s")
                time.sleep(0.002)
            out.append(done[key] - t0)
        return out


def pg_backends(url: str) -> list[int]:
    """PostgreSQL backends serving the database of ``url`` (for the CPU meter)."""
    engine = create_engine(_psycopg(url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )).scalars())
    finally:
        engine.dispose()


def _psycopg(url: str) -> Any:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg") if parsed.drivername == "postgresql" \
        else parsed


def reset_schema(url: str) -> None:
    engine = create_engine(_psycopg(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ))
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def delete_queue(broker: str, name: str) -> None:
    """Delete a queue and its messages; declared first, as Celery declares it, because
    Redis only deletes what the channel knows it bound."""
    from kombu import Connection, Exchange, Queue

    with Connection(broker) as conn:
        bound = Queue(name, Exchange(name), routing_key=name)(conn.default_channel)
        bound.declare()
        bound.delete()


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def create_database(server: str) -> tuple[str, Any]:
    admin = create_engine(_psycopg(server), isolation_level="AUTOCOMMIT")
    name = f"tether_bench_celery_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(server).set(database=name).render_as_string(hide_password=False), admin


# -- the run -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=400, help="chains per throughput trial")
    parser.add_argument("--latency-chains", type=int, default=60)
    parser.add_argument("--workers", default="1,2,4", help="worker processes to try")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per process")
    parser.add_argument("--rounds", type=int, default=2, help="throughput trials per cell")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pg", default=os.environ.get("TETHER_TEST_PG_URL")
                        or "postgresql://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL server where this user may CREATE DATABASE")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="which systems to run (comma-separated)")
    parser.add_argument("--latency-polls", default="0.2,0.02",
                        help="Tether outbox poll intervals for the latency runs")
    parser.add_argument("--work-ms", type=float, default=0.0,
                        help="each agent (and plain task) sleeps this long, as on an I/O "
                             "call; 0 (the default) measures the harness alone")
    parser.add_argument("--submit-many", action="store_true",
                        help="Tether: submit a burst with one Project.submit_many (a "
                             "transaction per 200 chains) instead of one Project.submit "
                             "(one commit) per chain")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    if args.work_ms < 0:
        parser.error(f"--work-ms must be 0 or more (got {args.work_ms:g})")
    if args.latency_chains < 0:
        parser.error(f"--latency-chains must be 0 (no latency runs) or more "
                     f"(got {args.latency_chains})")
    if args.quick:
        args.chains, args.latency_chains, args.rounds = 100, 20, 1
    if args.chains < 1 or args.rounds < 1:
        parser.error(f"--chains and --rounds must be 1 or more (got {args.chains} and "
                     f"{args.rounds})")
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        workers = []
    if not workers or min(workers) < 1:
        parser.error(f"--workers takes process counts of 1 or more, comma-separated, "
                     f"such as 1,2,4 (got {args.workers!r})")

    chosen = args.systems.split(",")
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown:
        parser.error(f"--systems: unknown {', '.join(map(repr, unknown))}; choose from "
                     f"{','.join(SYSTEMS)}")
    try:
        polls = [float(p) for p in args.latency_polls.split(",") if p]
    except ValueError:
        polls = []
    if not polls or min(polls) <= 0:
        parser.error(f"--latency-polls takes poll intervals in seconds above 0, "
                     f"comma-separated, such as 0.2,0.02 (got {args.latency_polls!r})")

    pg_url, admin = create_database(args.pg)
    results: list[Result] = []
    began = time.time()
    folder = Path(tempfile.mkdtemp(prefix="bench-celery-"))
    work = args.work_ms
    plain = PlainCelery(args.broker, args.concurrency, work_ms=work)
    plain_pg = PlainCelery(args.broker, args.concurrency, pg_url, work_ms=work)
    harness = TetherWorkers("celery", args.broker, pg_url, args.concurrency, folder, work,
                            args.submit_many)
    local = TetherWorkers("local", args.broker, pg_url, args.concurrency, folder, work,
                          args.submit_many)
    systems = [s for s in (plain, plain_pg, harness, local) if s.system in chosen]
    completed = False
    try:
        for k in workers:
            # The systems alternate, so a drift of the machine hits them alike.
            for _ in range(args.rounds):
                for system in systems:
                    try:  # a start that fails stops what it started
                        system.start(k)
                        with CpuMeter(system.pids) as meter:
                            seconds, lat = system.run_chains(args.chains)
                        results.append(Result(system.system, "throughput", k, args.chains,
                                              seconds, lat, cpu_seconds=meter.seconds,
                                              cpu_parts=meter.parts))
                        rps = results[-1].runs_per_second
                        parts = ", ".join(
                            f"{part} {ms:.2f}" for part, ms in
                            results[-1].cpu_ms_per_run_parts.items())
                        console.print(f"{system.system:12} {k} proc: {rps:7.0f} runs/s, "
                                      f"{results[-1].cpu_ms_per_run:.2f} CPU ms/run "
                                      f"({parts})", highlight=False)
                    finally:
                        system.stop()
        for side in systems if args.latency_chains else []:  # 0: throughput only
            for poll in (polls if isinstance(side, TetherWorkers) else [None]):
                try:
                    if isinstance(side, TetherWorkers):
                        side.start(1, poll=poll or 0.2)
                    else:
                        side.start(1)
                    t0 = time.time()
                    lat = side.latency(args.latency_chains)
                    results.append(Result(side.system, "latency", 1, len(lat), time.time() - t0,
                                          lat, poll=poll))
                    at = "" if poll is None else f" poll {poll}"
                    console.print(f"{side.system:12} latency{at}: "
                                  f"{median(lat) * 1e3:.1f} ms median", highlight=False)
                finally:
                    side.stop()
        completed = True
    finally:
        harness.engine.dispose()
        local.engine.dispose()
        with admin.connect() as conn:
            name = make_url(pg_url).database
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        if completed:
            shutil.rmtree(folder, ignore_errors=True)
        else:  # the workers' stderr is in it
            console.print(f"the Tether workers' logs are kept in {folder}", highlight=False)
    report(results, workers, args, time.time() - began)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "args": {k: str(v) for k, v in vars(args).items()},
            "results": [r.to_json() for r in results],
        }, indent=2))
    return 0


def report(results: list[Result], workers: list[int], args: Any, elapsed: float) -> None:
    def trials(system: str, k: int) -> list[Result]:
        """The throughput trials of ``system`` at ``k`` processes, in round order."""
        return [r for r in results if (r.system, r.kind, r.workers) == (system, "throughput", k)]

    def rate(system: str, k: int) -> float:
        return median([r.runs_per_second for r in trials(system, k)])

    def paired(base: str, k: int) -> float:
        """Median over rounds of base's rate / Tether's: each round runs the systems one
        after the other, so a pair shares the machine's spell of the moment."""
        return median([b.runs_per_second / t.runs_per_second
                       for b, t in zip(trials(base, k), trials("tether", k), strict=True)])

    def cpu(system: str, k: int, part: str | None = None) -> float:
        """Median CPU per run (ms) of ``system`` at ``k`` processes, or of one part of it."""
        if part is None:
            return median([r.cpu_ms_per_run for r in trials(system, k)])
        return median([r.cpu_ms_per_run_parts.get(part, 0.0) for r in trials(system, k)])

    systems = [s for s in ("celery", "celery+pg", "tether", "tether-local")
               if any(r.system == s for r in results)]
    label = {"celery": "plain Celery", "celery+pg": "plain Celery + PG results",
             "tether": "Tether on Celery", "tether-local": "Tether local worker"}
    work = f"{args.work_ms:g} ms of I/O per agent" if args.work_ms else "no-op work"
    table = Table(title=f"Throughput, runs/s (chain a -> b -> c, {work}, Redis broker, "
                        f"PostgreSQL store, {args.concurrency} threads per process)")
    table.add_column("processes", justify="right")
    for system in systems:
        table.add_column(label[system], justify="right")
    ratios = [b for b in ("celery", "celery+pg") if b in systems and "tether" in systems]
    for b in ratios:
        table.add_column(f"Tether / {label[b]} time", justify="right")
        table.add_column("same, median of the rounds' ratios", justify="right")
    if "tether" in systems:
        table.add_column("Tether vs 1 process", justify="right")
    if "tether-local" in systems:
        table.add_column("local vs 1 process", justify="right")
    for k in workers:
        row = [str(k), *(f"{rate(s, k):,.0f}" for s in systems)]
        for b in ratios:
            row += [f"{rate(b, k) / rate('tether', k):.2f}x", f"{paired(b, k):.2f}x"]
        if "tether" in systems:
            row.append(f"{rate('tether', k) / rate('tether', workers[0]):.2f}x")
        if "tether-local" in systems:
            row.append(f"{rate('tether-local', k) / rate('tether-local', workers[0]):.2f}x")
        table.add_row(*row)
    console.print(table)

    costs = Table(title="CPU per run, ms: all (worker processes / PostgreSQL backends / Redis "
                        "/ the bench's own process)")
    costs.add_column("processes", justify="right")
    for system in systems:
        costs.add_column(label[system], justify="right")
    parts = ("workers", "postgres", "redis", "bench")
    for k in workers:
        costs.add_row(str(k), *(
            f"{cpu(system, k):.2f} ({' / '.join(f'{cpu(system, k, p):.2f}' for p in parts)})"
            for system in systems
        ))
    console.print(costs)

    lat = Table(title="End-to-end latency of one chain (submitted -> c finished), one process")
    lat.add_column("system")
    lat.add_column("median ms", justify="right")
    lat.add_column("p99 ms", justify="right")
    for r in results:
        if r.kind != "latency":
            continue
        name = label[r.system]
        if r.poll is not None:
            name += f", poll {r.poll} s"
        lat.add_row(name, f"{median(r.latencies) * 1e3:.1f}",
                    f"{percentile(r.latencies, 99) * 1e3:.1f}")
    if lat.row_count:
        console.print(lat)
    console.print(f"{os.cpu_count()} CPUs; whole run {elapsed:.0f} s", highlight=False)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "plain-worker":
        plain_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:7])
        sys.exit(0)
    sys.exit(main())
